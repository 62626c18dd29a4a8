"""Loads configs/<name>.py the way `config_flags.DEFINE_config_file` does (file path + optional arg)."""
import importlib.util
import os

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load_config(name: str, arg: str = ""):
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", os.path.join(CONFIGS, name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
