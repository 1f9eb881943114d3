"""Read and write the NetVLAD ``dbStruct`` ``.mat`` files that Pitts, Tokyo and Amsterdam-XXXL ship.

A ``dbStruct`` is a 1x1 MATLAB struct whose fields are read *by position*, as NetVLAD and
OpenIBL do (field names differ between releases)::

    standard:  [0] whichSet  [1] dbImage  [2] utmDb (2xN)  [3] qImage  [4] utmQ (2xQ)
               [5] numDb  [6] numQ  [7] posDistThr  [8] posDistSqThr  [9] nonTrivPosDistSqThr
    timestamp: [0] whichSet  [1] dbImage  [2] utmDb  [3] dbTimeStamp  [4] qImage  [5] utmQ
    (Tokyo)    [6] qTimeStamp  [7] numDb  [8] numQ  [9] posDistThr  [10] posDistSqThr  [11] ...

The variant is detected from the field types (is field 3 a cell array of strings, or numbers?),
never from the file name. Both MATLAB v5 files (``scipy.io``) and v7.3 files (HDF5: cell arrays
are object references to ``uint16`` char arrays under ``#refs#``) are supported; v7.3 cell
arrays with millions of names are decoded by reading the referenced datasets' headers and
bytes straight from the file, vectorised (see :class:`harness.matfile.v73.CharCellReader`), not
one h5py object at a time.

Modules::

    layout   field positions per variant, DbStruct, its assembly and checks
    read     read_dbstruct: v5 or v7.3, then the layout
    v5       the v5 byte-level pre-check and scipy.io reading
    v73      v7.3 (HDF5) reading, cell arrays of names in bulk
    write    write_dbstruct (the synthetic city and the tests)
"""

from harness.matfile.layout import DBSTRUCT_VARIABLE, MAT_VERSIONS, VARIANTS, DbStruct
from harness.matfile.read import read_dbstruct
from harness.matfile.write import write_dbstruct

__all__ = ["DBSTRUCT_VARIABLE", "MAT_VERSIONS", "VARIANTS", "DbStruct", "read_dbstruct",
           "write_dbstruct"]
