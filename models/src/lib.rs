//! Model core: Qwen2 and Llama in candle, Hugging Face and GGUF checkpoints, tokenizers, chat templates.
