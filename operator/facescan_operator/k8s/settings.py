"""The operator's settings, one model over its environment (the chart's Deployment sets
each variable from its values; `facescan operator --help` names the command's own)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from facescan_operator.k8s.policy import AdminPolicy


class OperatorSettings(BaseSettings):
    """FACESCAN_RECONCILE_INTERVAL_S, FACESCAN_CALIBRATION, FACESCAN_METRICS_PORT and
    FACESCAN_METRICS_ADDRESS, and the admin's policy (FACESCAN_POLICY_*). A value that
    does not parse stops the operator at its start, with the field it is for."""

    model_config = SettingsConfigDict(env_prefix="FACESCAN_", extra="ignore")

    reconcile_interval_s: float = Field(default=10.0, gt=0)
    """Seconds between two reconciles of a FaceScan (level-based)."""

    calibration: Path | None = None
    """A calibration table (JSON of `facescan-detector calibrate`) to size Jobs with;
    none: the table measured for this release."""

    metrics_port: int = Field(default=8080, ge=0, le=65535)
    """Port of the Prometheus metrics; 0: none."""

    metrics_address: str = "0.0.0.0"
    """Address the metrics bind: 0.0.0.0 in a pod, for Prometheus; 127.0.0.1 keeps them
    on this machine."""

    policy: AdminPolicy = Field(default_factory=AdminPolicy)
    """What FaceScans may ask for (FACESCAN_POLICY_DETECTOR_IMAGES, _VOLUME_TYPES,
    _POOLS)."""
