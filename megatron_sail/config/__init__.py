from megatron_sail.config.loader import ConfigError, config_from_dict, config_to_dict, load_config, save_config
from megatron_sail.config.schema import SailConfig

__all__ = ["ConfigError", "SailConfig", "config_from_dict", "config_to_dict", "load_config", "save_config"]
