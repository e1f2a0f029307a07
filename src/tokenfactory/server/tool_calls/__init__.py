"""Tool calling: reading tools off a chat request and tool calls off the model's reply.

One parser per family of models (`tagged`: hermes and SmolLM2, `llama3`: Llama 3.x JSON),
chosen from the model by `families.choose_family`; `setup.prepare_tools` is what
`prepare_chat` calls.
"""
