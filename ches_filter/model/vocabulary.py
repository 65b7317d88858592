"""Tokens a tokenizer gained after the model was trained, given rows in the model's embeddings.

Only ``--compat official`` needs it: for tokenizers without a chat template, the authors' script
adds ``<|prompter|>`` and ``<|assistant|>`` to the vocabulary and calls
``model.resize_token_embeddings(len(tokenizer))``. With ``mean_resizing=True`` (the default in
the transformers versions that have it, 5.x included) that fills the new rows with samples from a normal distribution whose mean is the mean of the existing rows and
whose covariance is theirs times 1e-9 (or with the mean itself when that covariance is not
positive definite), so every new row is the mean up to noise some 3e-5 of the rows' spread.
Here the new rows are that mean exactly (computed in float32, then cast), which is the script's
result without its noise.
"""

from __future__ import annotations

from typing import Any


def grow_embeddings(model: Any, size: int) -> int:
    """Give ``model``'s input embeddings at least ``size`` rows; new rows are the mean row.

    In place (the embedding module keeps its class, e.g. Gemma's scaled embedding), and
    ``config.vocab_size`` follows. Returns how many rows were added (0: already large enough).
    """
    import torch

    embeddings = model.get_input_embeddings()
    old = embeddings.weight
    added = size - old.shape[0]
    if added <= 0:
        return 0
    with torch.no_grad():
        mean = old.to(torch.float32).mean(dim=0).to(old.dtype)
        grown = torch.cat([old, mean[None, :].expand(added, -1)], dim=0)
    embeddings.weight = torch.nn.Parameter(grown, requires_grad=old.requires_grad)
    embeddings.num_embeddings = size
    model.config.vocab_size = size
    return added
