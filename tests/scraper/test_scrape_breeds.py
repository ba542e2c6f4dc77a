"""Breed names -> safe folder slugs, query text, breed lists; the original's folder names."""

from __future__ import annotations

import pytest

from scraper.breeds import (
    DEFAULT_BREEDS,
    BreedError,
    breed_folder,
    breed_slug,
    parse_breeds,
    query_for,
    read_breeds_file,
)


def test_defaults_are_the_originals_26_breeds():
    assert len(DEFAULT_BREEDS) == 26
    assert len({breed_slug(b) for b in DEFAULT_BREEDS}) == 26
    assert "jack russell terrier" in DEFAULT_BREEDS and "havanese" in DEFAULT_BREEDS


@pytest.mark.parametrize("old", ["jack russel terrier", "jack_russel_terrier", "jack_russel_terrier_dog_pictures"])
def test_jack_russell_photos_go_to_a_folder_of_the_former_spelling(tmp_path, old):
    """The default's spelling was fixed; an existing folder named the old way keeps its breed's photos."""
    (tmp_path / old).mkdir()
    (tmp_path / "french_bulldogs").mkdir()
    assert breed_folder(tmp_path, "jack russell terrier") == tmp_path / old
    assert breed_folder(tmp_path / "empty", "jack russell terrier").name == "jack_russell_terrier"


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("labrador retrievers", "labrador_retrievers"),
        ("Labrador Retrievers", "labrador_retrievers"),
        ("labrador_retrievers_dog_pictures", "labrador_retrievers"),  # the original's folder name
        ("  Shih-Tzu  ", "shih_tzu"),
        ("../../etc/passwd", "etc_passwd"),
        ("a/b\\c", "a_b_c"),
        ("Cão de Água", "cão_de_água"),
        ("dog pictures", "dog_pictures"),  # the suffix alone is a name, not stripped to nothing
    ],
)
def test_breed_slug(name, slug):
    assert breed_slug(name) == slug
    assert "/" not in slug and "\\" not in slug and slug not in ("", ".", "..")


@pytest.mark.parametrize("bad", ["", "   ", "..", "/", "../..", "!!!", "___"])
def test_breed_slug_refuses_names_without_letters(bad):
    with pytest.raises(BreedError, match="no letters or digits"):
        breed_slug(bad)


def test_query_text_is_the_originals():
    assert query_for("labrador_retrievers_dog_pictures") == "labrador retrievers dog pictures"
    assert query_for("Shih Tzu") == "shih tzu dog pictures"


def test_parse_breeds_dedupes_by_slug():
    assert parse_breeds("beagles, Beagles ,shih tzu,,") == ["beagles", "shih_tzu"]


def test_read_breeds_file(tmp_path):
    f = tmp_path / "breeds.txt"
    f.write_text("# my breeds\nbeagles\n\nshih tzu, boxers  # two on a line\nbeagles\n", encoding="utf-8")
    assert read_breeds_file(f) == ["beagles", "shih_tzu", "boxers"]


def test_read_breeds_file_errors_name_the_file(tmp_path):
    with pytest.raises(BreedError, match="missing.txt"):
        read_breeds_file(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(BreedError, match="empty.txt: no breed names"):
        read_breeds_file(empty)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(BreedError, match="bin.txt: not a UTF-8"):
        read_breeds_file(binary)


def test_breed_folder_reuses_the_originals_folder(tmp_path):
    original = tmp_path / "labrador_retrievers_dog_pictures"
    original.mkdir()
    assert breed_folder(tmp_path, "labrador retrievers") == original
    assert breed_folder(tmp_path, "beagles") == tmp_path / "beagles"
    (tmp_path / "beagles").mkdir()
    assert breed_folder(tmp_path, "Beagles") == tmp_path / "beagles"


def test_scraper_never_imports_torch_core_or_the_ui():
    import subprocess
    import sys

    code = ("import sys, scraper.job, scraper.search, scraper.export, scraper.browser; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'core', 'ddpm_tui', 'textual'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
