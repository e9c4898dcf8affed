"""PDF, HTML and DOCX readers of read_documents, on real files built here (fpdf2, pypdf,
python-docx; nothing committed, nothing downloaded), and `ask` citing the page."""

from __future__ import annotations

import json
import logging
import random
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embedrag.cli import app
from embedrag.engine.core.errors import ConfigError, DataError
from embedrag.engine.data.documents import read_documents

runner = CliRunner()
PAGE_TWO = "The otter sleeps under the old stone bridge at noon."
HTML = """<!doctype html><html><head><title>Otters of the river | Wildlife Site</title>
<meta name="description" content="All about otters"></head><body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/about">About us</a></li>
<li><a href="/shop">Shop</a></li><li><a href="/login">Login</a></li></ul></nav>
<div class="sidebar"><h3>Related</h3><ul><li><a href="/cats">Cats</a></li><li><a href="/dogs">Dogs</a></li></ul></div>
<article><h1>Otters</h1>
<p>Otters are semiaquatic mammals that live along rivers, lakes and coasts of every continent but two.</p>
<p>They eat fish, crabs and frogs, and they rest in dens called holts dug into the river bank.</p>
</article>
<footer><p>Copyright 2024 Example Wildlife Corp. All rights reserved.</p><a href="/cookies">Cookie policy</a></footer>
</body></html>"""


def make_pdf(path: Path, pages: list[str | None], title: str | None = None) -> Path:
    """A PDF with one page per entry: its text, or (None) only an image, as a scan is."""
    from fpdf import FPDF
    from PIL import Image

    pdf = FPDF()
    if title:
        pdf.set_title(title)
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        if text is None:
            pdf.image(Image.new("RGB", (60, 40), (120, 90, 60)), x=20, y=20, w=120)
        else:
            pdf.multi_cell(0, 8, text)
    pdf.output(str(path))
    return path


def make_docx(path: Path) -> Path:
    import docx

    document = docx.Document()
    document.core_properties.title = "Field guide"
    document.add_paragraph("Read this guide before the survey.")
    document.add_heading("Intro", level=1)
    document.add_paragraph("The survey counts otters along the river.")
    document.add_paragraph("It runs every spring.")
    document.add_heading("Scope", level=2)
    document.add_paragraph("The scope covers the upper valley only.")
    table = document.add_table(rows=2, cols=2)
    for (row, col), text in {(0, 0): "site", (0, 1): "count", (1, 0): "mill", (1, 1): "4"}.items():
        table.cell(row, col).text = text
    document.add_heading("Methods", level=1)
    document.add_heading("Counting", level=2)
    document.add_paragraph("Two observers count at dawn.")
    document.save(str(path))
    return path


@pytest.fixture
def document_warnings(caplog, monkeypatch):
    """Warnings of the documents module (the CLI's logging set-up stops propagation)."""
    monkeypatch.setattr(logging.getLogger("embedrag"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="embedrag.engine.data.documents")
    return caplog


def test_pdf_is_one_document_per_page_with_page_metadata(tmp_path):
    path = make_pdf(tmp_path / "report.pdf", ["Rivers run to the sea.", PAGE_TWO, "Third page."],
                    title="Quarterly report")
    docs = list(read_documents([path]))
    assert [d.id for d in docs] == ["report.pdf#p1", "report.pdf#p2", "report.pdf#p3"]
    holding = [d for d in docs if PAGE_TWO in " ".join(d.text.split())]
    assert len(holding) == 1 and holding[0].metadata == {"page": 2, "pages": 3}
    assert {d.title for d in docs} == {"Quarterly report"} and {d.source for d in docs} == {str(path)}
    untitled = list(read_documents([make_pdf(tmp_path / "notes.pdf", ["Some text."])]))
    assert untitled[0].title == "notes"


def test_pdf_pages_without_text_are_skipped_with_a_warning(tmp_path, document_warnings):
    path = make_pdf(tmp_path / "mixed.pdf", ["Page one text.", None, "Page three text."])
    docs = list(read_documents([path]))
    assert [d.metadata["page"] for d in docs] == [1, 3] and all(d.text.strip() for d in docs)
    records = [r for r in document_warnings.records if r.levelno == logging.WARNING]
    assert len(records) == 1 and str(path) in records[0].getMessage() and "page(s) 2 " in records[0].getMessage()

    document_warnings.clear()
    scan = make_pdf(tmp_path / "scan.pdf", [None, None])
    assert list(read_documents([scan])) == []
    messages = [r.getMessage() for r in document_warnings.records]
    assert len(messages) == 1 and str(scan) in messages[0] and "no extractable text" in messages[0]
    assert "\n" not in messages[0]


def test_encrypted_pdf_needs_a_password_or_opens_with_an_empty_one(tmp_path):
    from pypdf import PdfWriter

    plain = make_pdf(tmp_path / "plain.pdf", ["Secret numbers.", PAGE_TWO])
    writer = PdfWriter(clone_from=plain)
    writer.encrypt("s3cret")
    writer.write(tmp_path / "locked.pdf")
    with pytest.raises(DataError, match="encrypted PDF that needs a password") as raised:
        list(read_documents([tmp_path / "locked.pdf"]))
    assert str(tmp_path / "locked.pdf") in str(raised.value) and "\n" not in str(raised.value)
    # Only an owner password (printing/copying restrictions), AES: opens with the empty one.
    writer = PdfWriter(clone_from=plain)
    writer.encrypt("", owner_password="owner", algorithm="AES-256")
    writer.write(tmp_path / "restricted.pdf")
    docs = list(read_documents([tmp_path / "restricted.pdf"]))
    assert [d.metadata["page"] for d in docs] == [1, 2] and PAGE_TWO in " ".join(docs[1].text.split())


@pytest.mark.parametrize("name", ["broken.pdf", "broken.docx"])
def test_a_corrupt_file_is_a_one_line_data_error_naming_it(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(DataError, match="not a readable (PDF|DOCX) file") as raised:
        list(read_documents([path]))
    assert str(raised.value).startswith(f"{path}: ") and "\n" not in str(raised.value)


def test_an_unreadable_file_is_a_data_error_naming_it(tmp_path, monkeypatch):
    path = make_pdf(tmp_path / "report.pdf", ["Text."])

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(DataError, match="cannot read it") as raised:
        list(read_documents([path]))
    assert str(raised.value) == f"{path}: cannot read it (permission denied)"


def test_docx_sections_carry_their_heading_path(tmp_path):
    path = make_docx(tmp_path / "guide.docx")
    docs = list(read_documents([path]))
    assert [(d.id, d.metadata["heading_path"]) for d in docs] == [
        ("guide.docx#s1", ""), ("guide.docx#s2", "Intro"), ("guide.docx#s3", "Intro > Scope"),
        ("guide.docx#s4", "Methods > Counting")]  # "Methods" alone has no text: no document
    assert {d.title for d in docs} == {"Field guide"} and docs[0].metadata["sections"] == 4
    assert docs[1].text == "Intro\n\nThe survey counts otters along the river.\n\nIt runs every spring."
    assert docs[2].text.endswith("The scope covers the upper valley only.\n\nsite | count\nmill | 4")


MARKDOWN = """Notes before any heading.

Guide
=====

The survey counts otters.

## Scope

```bash
# not a heading: a comment in a code fence
count --river upper
```

### Sites

- mill
- weir

# Methods
## Counting
Twice a day.
"""


def test_markdown_sections_carry_their_heading_path(tmp_path):
    (tmp_path / "guide.md").write_text(MARKDOWN)
    (tmp_path / "flat.md").write_text("No headings at all.\n\nJust two paragraphs.")
    docs = list(read_documents([tmp_path]))
    assert [(d.id, d.metadata.get("heading_path")) for d in docs] == [
        ("flat.md", None), ("guide.md#s1", ""), ("guide.md#s2", "Guide"), ("guide.md#s3", "Guide > Scope"),
        ("guide.md#s4", "Guide > Scope > Sites"), ("guide.md#s5", "Methods > Counting")]
    assert docs[0].text == "No headings at all.\n\nJust two paragraphs." and docs[0].title == "flat"
    assert docs[3].text == "Scope\n\n```bash\n# not a heading: a comment in a code fence\ncount --river upper\n```"
    assert docs[4].text == "Sites\n\n- mill\n- weir" and docs[5].text == "Counting\n\nTwice a day."
    assert docs[1].metadata["sections"] == 5 and {d.title for d in docs[1:]} == {"guide"}


def test_docx_without_text_is_skipped_with_a_warning(tmp_path, document_warnings):
    import docx

    docx.Document().save(str(tmp_path / "blank.docx"))
    assert list(read_documents([tmp_path / "blank.docx"])) == []
    assert [r.getMessage() for r in document_warnings.records] == [f"{tmp_path / 'blank.docx'}: no text found; skipped"]


def test_html_keeps_the_article_and_drops_the_boilerplate(tmp_path, document_warnings):
    (tmp_path / "otters.html").write_text(HTML, encoding="utf-8")
    [doc] = read_documents([tmp_path / "otters.html"])
    assert doc.id == "otters.html" and doc.source == str(tmp_path / "otters.html")
    assert doc.title in ("Otters", "Otters of the river")
    assert "dens called holts" in doc.text and "semiaquatic mammals" in doc.text
    assert "Cookie policy" not in doc.text and "Login" not in doc.text
    assert "\n\n" in doc.text  # one paragraph per block, for the chunker
    # No main content the heuristic accepts: the plain text, never nothing.
    (tmp_path / "tiny.htm").write_text("<html><body><div>Just a line.</div></body></html>")
    [tiny] = read_documents([tmp_path / "tiny.htm"])
    assert "Just a line." in tiny.text and tiny.title == "tiny"
    (tmp_path / "empty.html").write_text("<html><head><title>x</title></head><body></body></html>")
    assert list(read_documents([tmp_path / "empty.html"])) == []
    assert any("empty.html: no text found" in r.getMessage() for r in document_warnings.records)


@pytest.mark.parametrize(("name", "module", "package"), [
    ("report.pdf", "pypdf", "pypdf"), ("page.html", "trafilatura", "trafilatura"),
    ("guide.docx", "docx", "python-docx")])
def test_a_missing_extra_is_a_one_line_config_error(tmp_path, monkeypatch, name, module, package):
    path = tmp_path / name
    path.write_bytes(b"not parsed: the import fails first")
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ConfigError) as raised:
        list(read_documents([path]))
    assert str(raised.value) == f"reading {path} needs {package}: pip install 'embedrag[documents]'"
    result = runner.invoke(app, ["index", "--input", str(path), "--db", str(tmp_path / "db")],
                           env={"COLUMNS": "300"})
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "embedrag[documents]" in lines[0] and name in lines[0]


def test_unsupported_types_error_by_name_and_are_skipped_in_folders(tmp_path):
    (tmp_path / "slides.pptx").write_bytes(b"x")
    with pytest.raises(DataError, match=r"slides\.pptx: unsupported file type \.pptx; supported: .*\.pdf"):
        list(read_documents([tmp_path / "slides.pptx"]))
    (tmp_path / "~$guide.docx").write_bytes(b"Word's lock file")
    (tmp_path / "note.txt").write_text("A note.")
    assert [d.id for d in read_documents([tmp_path])] == ["note.txt"]


def test_index_a_folder_of_pdf_docx_html_and_ask_cites_the_page(tiny_bert, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    make_pdf(folder / "report.pdf", ["Rivers run to the sea.", PAGE_TWO, "Third page."])
    make_docx(folder / "guide.docx")
    (folder / "otters.html").write_text(HTML, encoding="utf-8")
    db = str(tmp_path / "db")
    result = runner.invoke(app, ["index", "--input", str(folder), "--model", str(tiny_bert), "--db", db])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["ask", PAGE_TWO, "--db", db, "--json", "-k", "50"])
    assert result.exit_code == 0, result.output
    passages = json.loads(result.output)["passages"]
    assert {p["doc_id"].split("#")[0] for p in passages} == {"report.pdf", "guide.docx", "otters.html"}
    [hit] = [p for p in passages if "old stone bridge" in p["text"]]
    assert hit["doc_id"] == "report.pdf#p2" and hit["metadata"] == {"page": 2, "pages": 3}
    assert hit["source"] == str(folder / "report.pdf")
    scope = [p for p in passages if p["doc_id"] == "guide.docx#s3"]
    assert scope and scope[0]["metadata"]["heading_path"] == "Intro > Scope"
    result = runner.invoke(app, ["ask", PAGE_TWO, "--db", db, "-k", "50"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert f"{folder / 'report.pdf'} p. 2" in result.output


def test_the_sources_table_shows_the_page_or_the_section():
    from rich.console import Console

    from embedrag.cli.ask import _sources_table
    from embedrag.engine.llm.rag import Answer
    from embedrag.engine.retrieval.store import Hit

    hits = [Hit(1, 0.9, "r#p3#0", "r#p3", 0, "t", "R", "report.pdf", {"page": 3, "pages": 9}),
            Hit(2, 0.8, "g#s2#0", "g#s2", 0, "t", "G", "guide.docx", {"heading_path": "Intro > Scope"}),
            Hit(3, 0.7, "n#0", "n", 0, "t", "N", "notes.txt", {})]
    console = Console(width=200, record=True)
    console.print(_sources_table(Answer(question="q", passages=hits, answer=None, generator="none")))
    text = console.export_text()
    assert "report.pdf p. 3" in text and "guide.docx § Intro > Scope" in text
    assert "notes.txt" in text and "notes.txt p." not in text
