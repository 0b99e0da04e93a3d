"""Prefect Block types holding the platform's credentials.

Secrets are pydantic ``SecretStr`` fields: masked in ``repr``/``str``, in logs and in
Prefect API reads without ``include_secrets``. They are unwrapped only inside
``get_client()`` / ``get_key()`` / ``get_store()``. Flows load blocks through
:mod:`blocks.loader`; the bootstrap step (``deployments/bootstrap.py``) creates them.
"""

from __future__ import annotations

from blocks.llm import LLMBlock
from blocks.model_store import ModelStoreBlock
from blocks.mongodb import MongoDBBlock
from blocks.slack import SlackBlock
from blocks.smtp import SMTPBlock
from blocks.trading_engine import TradingEngineBlock

#: Every credential block type, in bootstrap order.
ALL_BLOCKS = (MongoDBBlock, LLMBlock, SlackBlock, SMTPBlock, TradingEngineBlock, ModelStoreBlock)

__all__ = [
    "ALL_BLOCKS",
    "LLMBlock",
    "ModelStoreBlock",
    "MongoDBBlock",
    "SMTPBlock",
    "SlackBlock",
    "TradingEngineBlock",
]
