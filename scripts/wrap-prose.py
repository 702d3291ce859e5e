#!/usr/bin/env python3
"""Wrap comment and docstring lines longer than ruff's 100 columns, and nothing else.

scripts/repoint-citations.sh runs it on the Python files it rewrote: the longer in-repo names
(``tests/fixtures/payloads/...``) can push a prose line past the limit. Only lines that are
wholly a comment, or inside a multi-line docstring, are split (at a space, same indentation), so
code never changes.

    scripts/wrap-prose.py FILE.py...
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize

LIMIT = 100


def prose_lines(source: str) -> dict[int, tuple[bool, int, int]]:
    """Line number (1-based) -> (is a comment, first and last column a cut may be at): whole
    comment lines, and the text of multi-line docstrings (never the code around their quotes)."""
    # Only strings that are statements of their own (docstrings): a data string would change.
    docstrings = {node.lineno for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                  and isinstance(node.value.value, str)}
    lines: dict[int, tuple[bool, int, int]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        quotes = tok.string.lstrip("rRuUbBfF")[:3] if tok.type == tokenize.STRING else ""
        if quotes in ('"""', "'''") and tok.start[0] in docstrings:
            for number in range(tok.start[0], tok.end[0] + 1):
                first = tok.start[1] + 3 if number == tok.start[0] else 0
                last = tok.end[1] - 3 if number == tok.end[0] else LIMIT
                lines[number] = (False, first, last)
        elif tok.type == tokenize.COMMENT and not tok.line[:tok.start[1]].strip():
            lines[tok.start[0]] = (True, tok.start[1] + 1, LIMIT)
        elif tok.type == tokenize.COMMENT:  # after code: may move to a line of its own
            trailing[tok.start[0]] = tok.start[1]
    return lines


trailing: dict[int, int] = {}
"""Line -> column of a comment that follows code on that line (filled by prose_lines)."""


def wrap(line: str, comment: bool, first: int, last: int) -> list[str]:
    indent = line[:len(line) - len(line.lstrip())]
    follow = indent + ("# " if comment else "")
    pieces = []
    while len(line) > LIMIT:
        cut = line.rfind(" ", max(first, len(follow) + 1), min(last, LIMIT) + 1)
        if cut < 0:
            break
        pieces.append(line[:cut].rstrip())
        line = follow + line[cut + 1:].lstrip()
        first, last = len(follow) + 1, last - cut + len(follow) if last < LIMIT else LIMIT
    return [*pieces, line]


def main(paths: list[str]) -> int:
    for path in paths:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        trailing.clear()
        try:
            prose = prose_lines(source)
        except (tokenize.TokenError, SyntaxError):
            continue
        out: list[str] = []
        for number, line in enumerate(source.splitlines(), 1):
            if len(line) > LIMIT and number in prose:
                out += wrap(line, *prose[number])
            elif len(line) > LIMIT and number in trailing:
                # "code  # long comment" -> the comment on its own line(s) above the code.
                code, comment = line[:trailing[number]].rstrip(), line[trailing[number]:]
                indent = code[:len(code) - len(code.lstrip())]
                out += wrap(indent + comment, True, len(indent) + 1, LIMIT)
                out.append(code)
            else:
                out.append(line)
        text = "\n".join(out) + ("\n" if source.endswith("\n") else "")
        if text != source:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            print(f"wrapped long prose lines in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
