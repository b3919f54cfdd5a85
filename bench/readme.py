"""The README's generated blocks: each benchmark script rewrites the text between its own
``<!-- name:start -->`` and ``<!-- name:end -->`` markers, nothing else."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def replace_block(name: str, body: str, *, readme: Path = README) -> bool:
    """Put ``body`` between the ``name`` markers; False (README untouched) when they are missing."""
    text = readme.read_text(encoding="utf-8")
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{body}\n{end}{tail}", encoding="utf-8")
    return True
