from statex.data.tokenizers import ByteTokenizer, HFTokenizer, load_tokenizer, train_bpe_tokenizer

__all__ = ["ByteTokenizer", "HFTokenizer", "load_tokenizer", "train_bpe_tokenizer"]
