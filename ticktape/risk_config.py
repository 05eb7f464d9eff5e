"""The trading core's configurations from the settings: the risk limits file
(``RISK_CONFIG``, default ``config/risk.yaml``) and the paper execution's ``EXEC_*``."""

from __future__ import annotations

from pathlib import Path

import yaml

from .config import REPO_ROOT, ConfigError, Settings
from .core.execution import ExecConfig
from .core.risk import RiskLimits

DEFAULT_RISK_CONFIG = REPO_ROOT / "config" / "risk.yaml"


def risk_config_path(s: Settings) -> Path:
    return Path(s.risk_config) if s.risk_config else DEFAULT_RISK_CONFIG


def load_risk_limits(path: str | Path) -> RiskLimits:
    """Parse and validate a risk file; any problem is one ConfigError line naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"risk config {path}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"risk config {path}: invalid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    try:
        return RiskLimits.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"risk config {path}: {e}") from None


def exec_config(s: Settings) -> ExecConfig:
    """The paper execution's configuration (``EXEC_*``, validated by the settings)."""
    return ExecConfig(
        s.exec_slippage_bps,
        s.exec_commission.lower(),
        s.exec_commission_per_share,
        s.exec_commission_bps,
        s.exec_commission_min,
    )
