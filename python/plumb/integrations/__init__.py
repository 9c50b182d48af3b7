"""Drop-in policies for serving engines: ``vllm.PlumbEplbPolicy`` and ``sglang.rebalance_experts``.

Each module imports torch when used (the engines hand over and expect torch tensors).
"""
