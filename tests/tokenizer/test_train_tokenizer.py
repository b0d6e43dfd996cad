"""train_tokenizer: the challenge's SentencePiece options, determinism, atomic files, clear errors."""

from __future__ import annotations

import random

import pytest
import sentencepiece as spm

from pgolf.errors import PgolfError
from pgolf.tokenizer.train import CHALLENGE_SPM_OPTIONS, train_tokenizer, vocab_file_text

WORDS = (
    "the of and to in is was for on that with as by at from his her they this have had are not but "
    "one all which were when there been more their said each about would many time them these some"
).split()


def corpus(num_docs: int = 40, seed: int = 0) -> list[str]:
    """Deterministic English-like documents with digits and punctuation, few distinct characters."""
    rng = random.Random(seed)
    docs = []
    for _ in range(num_docs):
        sentences = []
        for _ in range(rng.randint(3, 8)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 12))]
            words.insert(rng.randint(0, len(words)), str(rng.randint(0, 99999)))
            sentences.append(" ".join(words).capitalize() + ".")
        docs.append(" ".join(sentences))
    return docs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tok"
    model = train_tokenizer(corpus(), out, 320)
    return model, spm.SentencePieceProcessor(model_file=str(model))


def test_writes_model_and_vocab_and_nothing_else(trained):
    model, _ = trained
    assert model.name == "tok.model"
    assert sorted(p.name for p in model.parent.iterdir()) == ["tok.model", "tok.vocab"]


def test_model_has_the_challenge_ids_and_size(trained):
    _, sp = trained
    assert sp.vocab_size() == 320
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert sum(sp.is_byte(i) for i in range(sp.vocab_size())) == 256  # byte_fallback


def test_model_behaves_like_the_challenge_options(trained):
    _, sp = trained
    assert [sp.id_to_piece(i) for i in sp.encode("90210")] == ["9", "0", "2", "1", "0"]  # split_digits
    assert not sp.id_to_piece(sp.encode("the time")[0]).startswith("\u2581")  # add_dummy_prefix=False
    assert sp.decode(sp.encode("\ufb01ne")) == "fine"  # nmt_nfkc folds the ligature
    snowman = sp.encode("\u2603")
    assert all(sp.is_byte(i) for i in snowman) and len(snowman) == 3  # unseen char -> 3 byte pieces
    assert sp.decode(snowman) == "\u2603"


def test_options_are_the_challenge_exporter_options():
    # The exporter's kwargs (download_hf_docs_and_tokenize.py), minus the per-run vocab size and paths.
    assert CHALLENGE_SPM_OPTIONS == {
        "model_type": "bpe",
        "character_coverage": 0.999,
        "byte_fallback": True,
        "split_digits": True,
        "normalization_rule_name": "nmt_nfkc",
        "add_dummy_prefix": False,
        "pad_id": 0,
        "bos_id": 1,
        "eos_id": 2,
        "unk_id": 3,
        "hard_vocab_limit": False,
    }


def test_training_is_deterministic(tmp_path, trained):
    model, _ = trained
    again = train_tokenizer(corpus(), tmp_path / "elsewhere" / "other", 320)
    assert again.read_bytes() == model.read_bytes()
    assert again.with_suffix(".vocab").read_bytes() == model.with_suffix(".vocab").read_bytes()


def test_vocab_file_matches_sentencepiece_own(tmp_path, trained):
    model, sp = trained
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_prefix=str(tmp_path / "ref"),
        vocab_size=320,
        minloglevel=2,
        **CHALLENGE_SPM_OPTIONS,
    )
    assert model.with_suffix(".vocab").read_text(encoding="utf-8") == (tmp_path / "ref.vocab").read_text(
        encoding="utf-8"
    )
    assert vocab_file_text(sp).splitlines()[4] == "<0x00>\t0"


def test_training_is_quiet(tmp_path, capfd):
    train_tokenizer(corpus(10), tmp_path / "q", 320)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_trains_from_text_files(tmp_path, trained):
    model, _ = trained
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(corpus()) + "\n", encoding="utf-8")
    from_str = train_tokenizer(str(text), tmp_path / "a", 320)
    from_list = train_tokenizer([text], tmp_path / "b", 320)
    assert from_str.read_bytes() == from_list.read_bytes() == model.read_bytes()


def test_cleans_texts_like_the_exporter(tmp_path, trained):
    model, _ = trained
    noisy = ["", "   "] + [f"  {doc}\n" for doc in corpus()]
    assert train_tokenizer(noisy, tmp_path / "n", 320).read_bytes() == model.read_bytes()


def test_missing_training_file_is_named(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(PgolfError, match=f"{missing}: tokenizer training text file not found"):
        train_tokenizer([missing], tmp_path / "t", 320)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("texts", [[], ["", "  \n  "]])
def test_no_text_is_an_error(tmp_path, texts):
    with pytest.raises(PgolfError, match="no training text"):
        train_tokenizer(texts, tmp_path / "t", 320)


@pytest.mark.parametrize("size", [0, 260, 70000, "320", True])
def test_vocab_size_out_of_range(tmp_path, size):
    with pytest.raises(PgolfError, match="vocab size"):
        train_tokenizer(corpus(5), tmp_path / "t", size)


def test_vocab_too_small_for_the_characters_is_a_one_line_error(tmp_path):
    many_chars = ["".join(chr(c) for c in range(0x4E00 + i * 40, 0x4E00 + i * 40 + 40)) for i in range(20)]
    with pytest.raises(
        PgolfError, match="SentencePiece training failed: Vocabulary size is smaller than required_chars"
    ) as err:
        train_tokenizer(many_chars * 3, tmp_path / "t", 300)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "t.model").exists()


def test_non_text_items_are_an_error(tmp_path):
    with pytest.raises(PgolfError, match="texts or paths, got int"):
        train_tokenizer(["fine text here", 42], tmp_path / "t", 320)


def test_only_overlong_sentences_is_an_error(tmp_path):
    # SentencePiece (like the challenge exporter, which keeps its default) skips sentences over 4192 bytes.
    with pytest.raises(PgolfError, match="no usable sentence"):
        train_tokenizer(["word " * 1000], tmp_path / "t", 320)
