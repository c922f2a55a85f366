"""Writes docs/image-format.md's record table from usercr/records.py; --check fails if stale."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from usercr import records as R  # noqa: E402

DOC = os.path.join(ROOT, "docs", "image-format.md")
BEGIN, END = "| type | name |", "\n## Notes on fields"


def table():
    rows = ["| type | name | fixed fields | tail | meaning |", "|---|---|---|---|---|"]
    for r in sorted(R.REGISTRY.values(), key=lambda r: r.type):
        fields = ", ".join(f"{n} {t}" + (f"[{c}]" if c > 1 or t == "char" else "") for n, t, c in r.fields) or "—"
        rows.append(f"| {r.type} | {r.name} | {fields} | {r.tail or '—'} | {r.doc} |")
    return "\n".join(rows) + "\n"


def render(text):
    start, end = text.index(BEGIN), text.index(END)
    return text[:start] + table() + text[end:]


def main():
    text = open(DOC).read()
    new = render(text)
    if "--check" in sys.argv:
        if new != text:
            sys.exit("docs/image-format.md is stale: run python tools/gen_format_doc.py")
        return
    open(DOC, "w").write(new)


if __name__ == "__main__":
    main()
