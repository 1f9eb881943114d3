"""Run the harness on SLURM through submitit: sharded extraction, sharded evaluation and
checkpointed multi-GPU training, with the same code path on one machine (``--cluster local``)
and in-process for debugging (``--cluster debug``).

Modules: :mod:`slurm.executor` (resources, profiles, the submitit executor),
:mod:`slurm.launch` (launch records, task states, resubmission), :mod:`slurm.extract`,
:mod:`slurm.evaluate`, :mod:`slurm.train`, :mod:`slurm.status` and :mod:`slurm.cli`
(``harness slurm ...``). Importing this package imports neither submitit nor torch.
"""
