"""Submitted text made inert in every format the leaderboard writes: one function per format.

Everything a stranger submits (method name, metadata: paper, code URL, backbone, training
data, license, description, and any field a later record schema adds) reaches the public page,
the README tables, the LaTeX and the CSV only through these functions:

* :func:`safe_url`: the only way a value becomes a link target. http(s) only, checked after
  trimming and after removing the control and whitespace characters that browsers drop from
  URLs (so ``java\\tscript:`` and ``\\x01javascript:`` are caught), case-insensitively; no
  ``javascript:``, ``data:``, ``vbscript:``, protocol-relative ``//host`` or credential-bearing
  ``user:pass@host`` URLs. Characters that could end a Markdown link or an HTML attribute are
  percent-encoded in the URL it returns.
* :func:`html_text` / :func:`html_attr`: HTML element text and double-quoted attribute values.
* :func:`markdown_text`: every ASCII punctuation character backslash-escaped (CommonMark lets
  any of them be escaped), so no emphasis, link, image, code span, raw HTML, table pipe or
  autolink can start inside a value; :func:`markdown_link` joins escaped text and a safe URL.
* :func:`latex_text`: the ten LaTeX special characters.
* :func:`csv_cell`: a cell that a spreadsheet would run as a formula (first character
  ``= + - @``, tab or carriage return) gets a leading apostrophe.

Every function first folds control characters (C0, DEL, C1) and the Unicode bidirectional
overrides into spaces: a value is always one line of text that reads as it is stored.
"""

from __future__ import annotations

import html
import re
import string
from urllib.parse import quote, urlsplit

#: Characters that never appear in a generated file: C0 controls, DEL, C1 controls, and the
#: bidirectional embedding/override/isolate marks (text that displays in another order).
_UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
#: What a browser's URL parser removes before reading the scheme (ASCII tab/newline anywhere,
#: C0 controls and space at the ends); all removed everywhere here, then the rest is checked.
_URL_DROPPED = re.compile(r"[\x00-\x20\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
#: Kept as they are in a safe URL's path, query and fragment (RFC 3986 unreserved and
#: reserved characters, less those that end a Markdown link or an attribute: ( ) [ ] ' ").
_URL_KEEP = "-._~:/?#@!$&*+,;=%"
MAX_URL_CHARS = 2000
#: ASCII punctuation that can start or end Markdown syntax anywhere in a line (GitHub: also
#: ``$`` math and ``:``/``@`` autolinks); ``- + . , ; / ? = % ' "`` only matter at the start
#: of a line, which a table cell never is (``.`` after ``www`` is escaped: autolinks).
_MARKDOWN_PUNCTUATION = frozenset(string.punctuation) - frozenset("-+.,;/?=%'\"")
_WWW_DOT = re.compile(r"(?i)(?<=www)\.")
_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "–": "--",
}
_CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def one_line(value) -> str:
    """``value`` as text, control characters and bidi overrides folded into spaces."""
    return _UNSAFE_CHARS.sub(" ", "" if value is None else str(value))


def unsafe_characters(value: str) -> list[str]:
    """The control characters and bidi overrides in ``value`` (as ``U+XXXX``), for messages."""
    return sorted({f"U+{ord(c):04X}" for c in _UNSAFE_CHARS.findall(value)})


def url_problem(value) -> str | None:
    """Why ``value`` may not be a link (None when :func:`safe_url` accepts it)."""
    if not isinstance(value, str):
        return f"a URL must be a string, got {type(value).__name__}"
    if len(value) > MAX_URL_CHARS:
        return f"a URL must be at most {MAX_URL_CHARS} characters"
    cleaned = _URL_DROPPED.sub("", value)
    scheme, colon, rest = cleaned.partition(":")
    if not colon or scheme.lower() not in ("http", "https"):
        if cleaned.startswith("//"):
            return "a protocol-relative URL (//host) is not allowed; give http:// or https://"
        return "only http:// and https:// URLs are allowed"
    if not rest.startswith("//"):
        return "an http(s) URL needs //host after the scheme"
    try:
        parts = urlsplit(cleaned)
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if "@" in parts.netloc:
        return "a URL with a user name or password (user:pass@host) is not allowed"
    host, _, port = parts.netloc.partition(":")
    if not _HOST.fullmatch(host) or (port and not (port.isdigit() and int(port) < 65536)):
        return f"host {parts.netloc!r} is not a plain host name (IDNs in punycode, xn--...)"
    return None


def safe_url(value) -> str | None:
    """The http(s) URL ``value`` as a link target, or None when it may not be a link.

    The returned URL has the dropped characters removed, a lower-case scheme and host, and
    every character outside :data:`_URL_KEEP`, letters and digits percent-encoded (so it holds
    no quote, bracket, parenthesis, angle bracket, backtick, pipe, space or non-ASCII).
    """
    if url_problem(value) is not None:
        return None
    parts = urlsplit(_URL_DROPPED.sub("", value))
    rest = parts.path + (f"?{parts.query}" if parts.query else "")
    rest += f"#{parts.fragment}" if parts.fragment else ""
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{quote(rest, safe=_URL_KEEP)}"


def html_text(value) -> str:
    """Text of an HTML element (``& < > " '`` as entities)."""
    return html.escape(one_line(value), quote=True)


def html_attr(value) -> str:
    """A double-quoted HTML attribute value (the same escaping: quotes included)."""
    return html.escape(one_line(value), quote=True)


def html_link(text, url) -> str:
    """``<a>`` to ``url`` when it is a safe http(s) URL, else the escaped text alone."""
    target = safe_url(url)
    if target is None:
        return html_text(text)
    return f'<a href="{html_attr(target)}" rel="nofollow noopener noreferrer">{html_text(text)}</a>'


def markdown_text(value) -> str:
    """Markdown (GitHub) text that renders as exactly ``value``: no markup, no autolink.

    The ASCII punctuation of :data:`_MARKDOWN_PUNCTUATION` is backslash-escaped (CommonMark
    lets any of it be escaped): emphasis, links and images, code spans, raw HTML and entities
    (``< > &``), table pipes, math (``$``), and the ``:``, ``@`` and ``www.`` that URL, e-mail
    and ``www.`` autolinks need.
    """
    text = "".join(f"\\{c}" if c in _MARKDOWN_PUNCTUATION else c for c in one_line(value))
    return _WWW_DOT.sub(r"\\.", text)


def markdown_link(text, url) -> str:
    """``[text](url)`` when ``url`` is a safe http(s) URL, else the escaped text alone."""
    target = safe_url(url)
    if target is None:
        return markdown_text(text)
    return f"[{markdown_text(text)}]({target})"


def latex_text(value) -> str:
    """LaTeX text: the special characters as their escaped forms."""
    return "".join(_LATEX_SPECIALS.get(c, c) for c in one_line(value))


def csv_cell(value):
    """A text cell a spreadsheet shows as text (formula starts get a leading apostrophe).

    Numbers and None pass through unchanged (they are data, not text a user typed).
    """
    if value is None or isinstance(value, (int, float)):
        return value
    raw = str(value)
    text = one_line(raw)
    if raw.startswith(_CSV_FORMULA_START) or text.lstrip().startswith(_CSV_FORMULA_START):
        return "'" + text
    return text
