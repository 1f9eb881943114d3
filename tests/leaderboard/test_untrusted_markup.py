"""Submitted text never becomes live markup or an active link (issue 18, class 1).

Hostile payloads (generated here, at least five per class) go through every writer: the HTML
page, the README's Markdown tables, LaTeX and CSV. Two routes: records really submitted with
hostile metadata (what validation lets through: free text in paper, backbone, license...), and
entries built by hand that bypass validation (a record edited by hand with its checksum
recomputed), so the writers are safe on their own. The page is loaded in headless Chromium:
no injected script runs, no injected element exists in the DOM, every link is http(s).
"""

from __future__ import annotations

import csv
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from badinputs import run_cli, snapshot, write_valid_features

from leaderboard import html as html_page
from leaderboard.benchmarks import get_benchmark
from leaderboard.escape import (
    csv_cell,
    html_attr,
    html_link,
    html_text,
    latex_text,
    markdown_link,
    markdown_text,
    one_line,
    safe_url,
    url_problem,
)
from leaderboard.tables import Entry, make_table, to_csv, to_latex, to_markdown

SPLIT = "synth-ams30k-test"
#: What an injected script or element does when it runs: a mark the test looks for.
MARK = "PWNED"

HTML_PAYLOADS = [
    f"<script>document.title='{MARK}'</script>",
    f"<img src=x id=injected onerror=\"document.title='{MARK}'\">",
    f"\"><svg id=injected onload=\"document.title='{MARK}'\">",
    f"'><iframe id=injected srcdoc=\"<script>parent.document.title='{MARK}'</script>\">",
    f"</td></tr></tbody></table><div id=injected>{MARK}</div>",
    f"<a id=injected href=\"javascript:document.title='{MARK}'\">click</a>",
    f"&lt;script&gt;{MARK}&lt;/script&gt; <!-- --> <style>*{{display:none}}</style>",
    f"<details open ontoggle=\"document.title='{MARK}'\" id=injected>",
]
URL_PAYLOADS = [
    f"javascript:document.title='{MARK}'",
    f" JaVaScRiPt:document.title='{MARK}'",
    f"java\tscript:document.title='{MARK}'",
    f"\x01javascript:document.title='{MARK}'",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "//evil.example/x",
    "https://user:pass@evil.example/",
    "https://good.example\\@evil.example/",
    "https:evil.example",
    "file:///etc/passwd",
]
MARKDOWN_PAYLOADS = [
    "[click](javascript:alert(1))",
    "![img](https://evil.example/pixel.png)",
    "a | b | c",
    "`code` and ``more``",
    "<img src=x onerror=alert(1)>",
    "**bold** _em_ ~~strike~~",
    "mail me: user@evil.example, www.evil.example, https://evil.example",
    "$x^2$ and \\(math\\)",
    "<https://evil.example>",
    "[ref]: https://evil.example",
]
LATEX_PAYLOADS = [
    r"\input{/etc/passwd}",
    r"$\immediate\write18{rm -rf ~}$",
    r"}\end{tabular}\begin{document}",
    "100% & #1 _under_ ^hat ~tilde",
    r"\\ \newline \catcode`\@=11",
]
CSV_PAYLOADS = [
    '=HYPERLINK("https://evil.example","x")',
    "+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1:A2)",
    "\t=1+1",
    "\r=1+1",
    " =1+1",
]
SAFE_URLS = {
    "https://example.org/paper": "https://example.org/paper",
    "  HTTPS://Example.ORG/a b ": "https://example.org/ab",
    "http://example.org/a(b)[c]\"'<>`|": "http://example.org/a%28b%29%5Bc%5D%22%27%3C%3E%60%7C",
    "https://example.org:8443/x?q=1&r=2#frag": "https://example.org:8443/x?q=1&r=2#frag",
    "https://xn--bcher-kva.example/": "https://xn--bcher-kva.example/",
}


def test_corpus_has_five_payloads_per_class():
    for corpus in (HTML_PAYLOADS, URL_PAYLOADS, MARKDOWN_PAYLOADS, LATEX_PAYLOADS, CSV_PAYLOADS):
        assert len(set(corpus)) >= 5


# --- one function per format --------------------------------------------------------------


@pytest.mark.parametrize("payload", URL_PAYLOADS)
def test_dangerous_urls_never_become_links(payload):
    assert safe_url(payload) is None
    assert url_problem(payload)
    assert "<a " not in html_link("name", payload)
    assert "](" not in markdown_link("name", payload)


@pytest.mark.parametrize("given, expected", sorted(SAFE_URLS.items()))
def test_http_urls_are_links_with_nothing_that_ends_one(given, expected):
    assert safe_url(given) == expected
    assert not re.search(r"[\s<>\"'()\[\]`|\\]", expected)
    assert html_link("x", given) == (
        f'<a href="{expected}" rel="nofollow noopener noreferrer">x</a>'.replace("&", "&amp;")
    )
    assert markdown_link("x", given) == f"[x]({expected})"


class _Tags(HTMLParser):
    """Every start tag and attribute of a document (what a browser would build)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.comments: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_comment(self, data):
        self.comments.append(data)


def _tags(markup: str) -> _Tags:
    parser = _Tags()
    parser.feed(markup)
    parser.close()
    return parser


@pytest.mark.parametrize("payload", HTML_PAYLOADS + MARKDOWN_PAYLOADS + URL_PAYLOADS)
def test_html_text_and_attributes_are_inert(payload):
    text = f"<td>{html_text(payload)}</td>"
    attribute = f'<td title="{html_attr(payload)}">x</td>'
    for markup in (text, attribute):
        parsed = _tags(markup)
        assert [tag for tag, _ in parsed.tags] == ["td"], markup
        assert not parsed.comments
    assert _tags(attribute).tags[0][1]["title"] == one_line(payload)


# Markdown: the characters that start syntax in a GitHub table cell must all be escaped.
_MARKDOWN_ACTIVE = set("\\`*_[]()<>&!|~:@$#{}")


def _unescaped_markdown(text: str) -> list[str]:
    """Active characters of ``text`` not preceded by an escaping backslash."""
    found, escaped = [], False
    for char in text:
        if escaped:
            escaped = False
            continue
        if char == "\\":
            escaped = True
            continue
        if char in _MARKDOWN_ACTIVE:
            found.append(char)
    assert not escaped, f"dangling backslash in {text!r}"
    return found


@pytest.mark.parametrize("payload", MARKDOWN_PAYLOADS + HTML_PAYLOADS + LATEX_PAYLOADS)
def test_markdown_text_escapes_every_active_character(payload):
    text = markdown_text(payload)
    assert _unescaped_markdown(text) == []
    assert "\n" not in text and "\r" not in text
    assert not re.search(r"(?i)www\.", text)  # no www. autolink
    # Unescaping gives back the payload (what GitHub shows), control characters as spaces.
    assert re.sub(r"\\(.)", r"\1", text) == re.sub(r"[\x00-\x1f]", " ", payload)


_LATEX_ESCAPES = re.compile(
    r"\\textbackslash\{\}|\\textasciitilde\{\}|\\textasciicircum\{\}|\\[&%$#_{}]"
)


@pytest.mark.parametrize("payload", LATEX_PAYLOADS + HTML_PAYLOADS + MARKDOWN_PAYLOADS)
def test_latex_text_escapes_every_special_character(payload):
    text = latex_text(payload)
    assert not re.search(r"[\\{}$&#^_%~]", _LATEX_ESCAPES.sub("", text)), text
    assert "\n" not in text


@pytest.mark.parametrize("payload", CSV_PAYLOADS)
def test_csv_cells_never_start_a_formula(payload):
    cell = csv_cell(payload)
    assert cell.startswith("'") and "\t" not in cell and "\r" not in cell
    assert csv_cell("ResNet-50") == "ResNet-50" and csv_cell(0.5) == 0.5


# --- every writer, on entries that bypass validation ----------------------------------------


def _hostile_entries() -> tuple[list[Entry], list[html_page.MethodInfo]]:
    """One method per payload (names must be valid; everything else is hostile)."""
    payloads = HTML_PAYLOADS + URL_PAYLOADS + MARKDOWN_PAYLOADS + LATEX_PAYLOADS + CSV_PAYLOADS
    entries, infos = [], []
    for number, payload in enumerate(payloads):
        method = f"m{number:02d}"
        entries.append(Entry(
            method=method, split=SPLIT, record_id=f"{number:016x}",
            submitted_at="2025-01-01T00:00:00Z",
            scores={"recall@1": 0.5, "recall@5": 0.6, "recall@10": 0.7},
            descriptor_dim=8, descriptor_dtype="float32",
            paper=payload, code_url=payload if number % 2 else URL_PAYLOADS[number % 11],
        ))
        fields = {key: payload for key, _ in html_page.METHOD_FIELDS}
        fields["code_url"] = URL_PAYLOADS[number % len(URL_PAYLOADS)]
        infos.append(html_page.MethodInfo(method, fields))
    return entries, infos


def test_markdown_tables_carry_no_markup_from_entries():
    from leaderboard.build import render_methods_markdown

    entries, infos = _hostile_entries()
    table = make_table(get_benchmark("synth-ams30k"), entries)
    for markdown in (to_markdown(table), render_methods_markdown(infos)):
        assert "](" not in markdown  # no link survives: none of the URLs is safe
        lines = markdown.splitlines()
        pipes = len(re.findall(r"(?<!\\)\|", lines[0]))
        for line in lines[2:]:  # the body, after the header and its rule
            assert len(re.findall(r"(?<!\\)\|", line)) == pipes, line  # no cell added
            cells = re.split(r"(?<!\\)\|", line)[1:-1]
            texts = [c for c in cells if not re.fullmatch(r"\s*(\*\*)?[\d.–]+(\*\*)?\s*", c)]
            assert texts and all(_unescaped_markdown(cell) == [] for cell in texts), line


def test_latex_and_csv_carry_no_markup_from_entries():
    entries, _ = _hostile_entries()
    table = make_table(get_benchmark("synth-ams30k"), entries)
    latex = to_latex(table)
    assert "\\input" not in latex and "\\write18" not in latex and "\\end{tabular}\\begin" \
        not in latex
    assert latex.count(r"\end{tabular}") == 1 and latex.count(r"\begin{tabular}") == 1
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert len(rows) == len(entries)
    for row in rows:
        for key in ("method", "paper", "code_url", "records"):
            assert not row[key].startswith(("=", "+", "-", "@", "\t", "\r")), row[key]
            assert not row[key].lstrip().startswith(("=", "+", "-", "@")), row[key]
    papers = {row["paper"] for row in rows}
    assert "'" + CSV_PAYLOADS[0] in papers  # neutralised, not dropped


# --- real records and a real browser ------------------------------------------------------


def _page_facts(markup: str) -> tuple[list[tuple[str, dict]], list[str]]:
    parsed = _tags(markup)
    return parsed.tags, parsed.comments


def assert_page_is_inert(markup: str, *, loaded: bool) -> None:
    """No injected element or handler, every link http(s) or an in-page anchor."""
    tags, _ = _page_facts(markup)
    for tag, attrs in tags:
        assert tag not in ("iframe", "img") or attrs.get("id") != "injected", (tag, attrs)
        assert attrs.get("id") != "injected", (tag, attrs)
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        if tag == "a":
            href = attrs.get("href", "")
            assert href.startswith(("https://", "http://", "#")), href
        for name in ("src", "srcdoc", "action", "formaction"):
            value = attrs.get(name)
            assert value is None or not re.match(r"(?i)\s*(javascript|data|vbscript):", value)
    scripts = [t for t, _ in tags if t == "script"]
    assert len(scripts) == 1, scripts  # the page's own sort script only
    assert [t for t, _ in tags if t in ("iframe", "svg")].count("iframe") == 0
    if loaded:
        assert 'data-sortable="ready"' in markup  # the page's own script did run
        title = re.search(r"<title>(.*?)</title>", markup, re.S).group(1)
        assert MARK not in title


@pytest.fixture(scope="module")
def hostile_results(tiny_city, tmp_path_factory):
    """Records really submitted with hostile metadata that validation lets through."""
    from harness.splits import get_split
    from leaderboard.submit import submit

    base = tmp_path_factory.mktemp("hostile")
    split = get_split(SPLIT, tiny_city.data_root)
    results = base / "results"
    texts = HTML_PAYLOADS[:4] + MARKDOWN_PAYLOADS[:3] + LATEX_PAYLOADS[:2] + CSV_PAYLOADS[:4]
    texts = [t for t in texts if t == one_line(t)]  # control characters are refused
    urls = [u for u in URL_PAYLOADS if u == one_line(u)]
    for number in range(5):
        payload = texts[number::5]
        meta = {
            "paper": urls[number] if number % 2 else payload[0],
            "backbone": payload[0],
            "training_data": payload[-1],
            "license": CSV_PAYLOADS[number % 4],
            "description": " ".join(payload),
            "code_url": f"https://example.org/{HTML_PAYLOADS[number]}".replace("\t", ""),
        }
        paths = write_valid_features(split, base / f"features{number}", seed=number)
        submit(paths, split=split, method_name=f"hostile-{number}", metadata=meta,
               results_dir=results, submitted_at="2025-01-01T00:00:00Z")
    return results


def test_page_from_hostile_records_in_headless_chromium(hostile_results, tmp_path):
    from leaderboard.browser import dump_dom, find_chromium
    from leaderboard.build import build_from_entries, build_leaderboard

    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed: run `bash .ci/browser.sh`")
    built = build_leaderboard(hostile_results, tmp_path / "records", grids=False)
    entries, infos = _hostile_entries()
    bypass = build_from_entries(entries, tmp_path / "entries", plots=False, grids=False)
    bypass_page = html_page.render_page(
        [html_page.Section(make_table(get_benchmark("synth-ams30k"), entries))], infos,
        summary=HTML_PAYLOADS[0], results_label=HTML_PAYLOADS[1])
    bypass.page.write_text(bypass_page, encoding="utf-8")
    for page in (built.page, bypass.page):
        markup = page.read_text(encoding="utf-8")
        assert_page_is_inert(markup, loaded=False)
        dom = dump_dom(page.resolve().as_uri(), binary=binary)
        assert_page_is_inert(dom, loaded=True)
        assert MARK in dom  # the payloads are there, as text
    readme = (tmp_path / "records" / "README.md").read_text(encoding="utf-8")
    body = readme.split("\n", 1)[1]  # after the generated-file notice (an HTML comment)
    rows = "\n".join(line for line in body.splitlines() if line.startswith("|"))
    assert MARK in rows and not re.search(r"(?<!\\)[<>]", rows)  # no raw HTML in a table
    links = re.findall(r"\]\(([^)]*)\)", body)
    assert links and all(link == safe_url(link) for link in links), links


@pytest.mark.parametrize("meta, problem", [
    ({"code_url": payload}, "code_url must be an http(s) URL") for payload in URL_PAYLOADS
] + [
    ({"backbone": "ResNet\u202e05"}, "backbone holds control or text-direction characters"),
    ({"license": "MIT\x1b[31m"}, "license holds control or text-direction characters"),
    ({"paper": "x\u2066y"}, "paper holds control or text-direction characters"),
    ({"training_data": "a\x00b"}, "training_data holds control or text-direction characters"),
    ({"description": "a\x85b"}, "description holds control or text-direction characters"),
])
def test_submit_refuses_dangerous_metadata(tiny_city, tmp_path, meta, problem):
    from harness.splits import get_split

    split = get_split(SPLIT, tiny_city.data_root)
    paths = write_valid_features(split, tmp_path / "features")
    meta_file = tmp_path / "meta.json"
    meta_file.write_text(json.dumps(meta), encoding="utf-8")
    before = snapshot(tmp_path)
    outcome = run_cli(["submit", *paths, "--split", SPLIT, "--data-root", tiny_city.data_root,
                       "--method-name", "m", "--meta-file", meta_file,
                       "--results", tmp_path / "results"])
    assert outcome.exit_code == 2, outcome.stderr
    assert len(outcome.error_lines) == 1 and "Traceback" not in outcome.stderr
    line = outcome.error_lines[0]
    assert line.startswith(f"error: {meta_file}: ") and problem in line, line
    assert snapshot(tmp_path) == before
    assert not Path(tmp_path / "results").exists()
