"""Settings of the economic evaluation of trained models and of the deploy rule (mixed into
:class:`core.settings.Settings`, which gives them their ``BOTAI_`` variables)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from core.schemas.economics import DeployRule


class EconomicsSettings(BaseModel):
    """Costs and bootstrap of the economic evaluation, and which tests the deploy rule runs."""

    deploy_rule: DeployRule = Field(
        default="both",
        description="Which held-out tests a trained model must pass to be deployed: accuracy "
        "(beat every comparator's direction accuracy by more than 1 SE), economic (beat every "
        "comparator's after-fee return by more than 1 SE of the paired difference) or both.",
    )
    economics_fee_bps: float = Field(
        default=10.0, ge=0, le=1000, description="Fee per fill of the economic evaluation, bps."
    )
    economics_slippage_bps: float = Field(
        default=0.0, ge=0, le=1000, description="Slippage per fill of the economic evaluation, bps."
    )
    economics_block_bars: int = Field(
        default=24, ge=1, le=10_000, description="Block length of the bootstrap, in bars."
    )
    economics_bootstrap_samples: int = Field(
        default=1000, ge=2, le=100_000, description="Bootstrap resamples of every figure."
    )
