"""The package's shape: every module imports, imports form no cycle, no module imports a layer above
its own, and the loop body and the README's "one RL step" follow collect -> learn -> log -> evaluate ->
checkpoint, naming functions that exist and that the main loop calls in that order."""
import ast
import importlib
import os
import pkgutil
import re


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "dots_jax")


def _modules() -> dict[str, str]:
  """module name -> file, for every module of the package (packages as their __init__)."""
  out = {"dots_jax": os.path.join(PKG, "__init__.py")}
  for m in pkgutil.walk_packages([PKG], "dots_jax."):
    rel = m.name.split(".")[1:]
    path = os.path.join(PKG, *rel)
    out[m.name] = os.path.join(path, "__init__.py") if m.ispkg else path + ".py"
  return out


def _import_graph() -> dict[str, set[str]]:
  """Edges of every `import` statement (module level or not) between package modules."""
  mods = _modules()
  graph = {m: set() for m in mods}
  for name, path in mods.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                   for a in node.names]
      for t in targets:
        # A submodule importing its own package's other submodules goes through the package's
        # __init__ without executing it again; only real module-to-module edges count.
        if t in mods and t != name and not name.startswith(t + "."):
          graph[name].add(t)
  return graph


# The package's layers, lowest first: a module may import its own layer and those below, never above.
LAYERS = (
    {"dots_jax", "fs", "config_base", "config_common", "methods"},
    {"model"},
    {"rl", "data"},
    {"rollout", "rewards", "exact", "policy"},
    {"difficulty"},
    {"selection", "evaluate"},
    # Run infrastructure: the config's one reader (typed settings), checkpoints, metrics, the run
    # directory and its lock, start-up checks, memory planning, the closing report.
    {"run"},
    # The job and what stands around it: entry points, the comparison, the testbed and its tools.
    {"train", "main", "compare", "tiny", "tools", "bench", "sim"},
)


def _layer(module: str) -> int:
  top = module.split(".")[1] if "." in module else module
  for rank, names in enumerate(LAYERS):
    if top in names:
      return rank
  raise AssertionError(f"{module}: dots_jax.{top} is in no layer of test_structure.LAYERS")


def test_every_package_directory_is_a_package():
  """Every directory of dots_jax with modules has an __init__.py: find_packages (setup.py) and
  this file's module walk skip a directory without one, so a non-editable install would lack it."""
  missing = [os.path.relpath(d, ROOT) for d, _, files in os.walk(PKG)
             if "__pycache__" not in d and any(f.endswith(".py") for f in files)
             and "__init__.py" not in files]
  assert not missing, missing


def test_every_module_imports():
  for name in _modules():
    importlib.import_module(name)


def test_imports_form_no_cycle():
  graph = _import_graph()
  state: dict[str, int] = {}  # 1 = on the stack, 2 = done
  stack: list[str] = []

  def visit(m):
    state[m] = 1
    stack.append(m)
    for n in sorted(graph[m]):
      if state.get(n) == 1:
        cycle = stack[stack.index(n):] + [n]
        raise AssertionError("import cycle: " + " -> ".join(cycle))
      if n not in state:
        visit(n)
    stack.pop()
    state[m] = 2

  for m in sorted(graph):
    if m not in state:
      visit(m)


def test_no_module_imports_a_layer_above_its_own():
  """A package's command (`<package>/__main__.py`) is an entry point nothing imports: it may read a
  run the way the job does."""
  graph = _import_graph()
  assert not any(t.endswith(".__main__") for targets in graph.values() for t in targets)
  upward = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
            for a, targets in graph.items() for b in sorted(targets)
            if _layer(b) > _layer(a) and not a.endswith(".__main__")]
  assert not upward, "\n".join(upward)


PHASES = ("collect", "learn", "log", "evaluate", "checkpoint")


def _loop_body() -> str:
  with open(os.path.join(PKG, "train.py")) as f:
    src = f.read()
  start = src.index("  for step in range(start, s.total_steps):")
  return src[start:src.index("  # ----- done", start)]


def test_loop_body_reads_collect_learn_log_evaluate_checkpoint():
  """The loop body's phase comments come in this order, and between collecting and logging the loop
  makes exactly one call into the update side (the learner owns replay, pi_old and the update)."""
  body = _loop_body()
  marks = [re.search(rf"^    # {p}\b", body, re.M) for p in PHASES]
  assert all(marks), [p for p, m in zip(PHASES, marks) if not m]
  starts = [m.start() for m in marks]
  assert starts == sorted(starts), dict(zip(PHASES, starts))
  learn_part = body[starts[1]:starts[2]]
  assert learn_part.count("learner.learn(") == 1, learn_part
  for name in ("mix_replay", "make_batch", "old_logp", "admit", "device_batch"):
    assert name not in body, f"the loop calls {name} itself instead of through the learner"


def test_readme_rl_step_names_the_functions_the_loop_calls_in_order():
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  para = re.search(r"\*\*One RL step\*\*(.*?)\n\n", readme, re.S)
  assert para, "README.md has no '**One RL step**' paragraph"
  names = re.findall(r"`([a-z_]+(?:\.[A-Za-z_]+)+)`", para.group(1))
  assert len(names) >= 5, names
  tags = [para.group(1).find(f"({p}") for p in PHASES]
  assert min(tags) >= 0 and tags == sorted(tags), f"the paragraph's phases: {dict(zip(PHASES, tags))}"
  loop = _loop_body()
  pos = 0
  for name in names:
    parts = name.split(".")
    # The longest importable prefix is the module; the rest are attributes that must exist.
    for cut in range(len(parts), 0, -1):
      try:
        obj = importlib.import_module("dots_jax." + ".".join(parts[:cut]))
        break
      except ImportError:
        continue
    else:
      raise AssertionError(f"README names {name!r}, which is no dots_jax module")
    for attr in parts[cut:]:
      assert hasattr(obj, attr), f"README names {name!r}, but {attr!r} does not exist"
      obj = getattr(obj, attr)
    # A factory `make_x` is called through what it returns, `x`.
    called = parts[-1][len("make_"):] if parts[-1].startswith("make_") else parts[-1]
    found = loop.find(called, pos)
    assert found >= 0, f"the main loop does not call {called!r} after position {pos} (README order)"
    pos = found


def _entry_points() -> list[str]:
  """Every command of the package: modules with a __main__ guard, and package __main__ modules."""
  out = []
  for name, path in _modules().items():
    with open(path) as f:
      src = f.read()
    if name.endswith(".__main__"):
      out.append(name[:-len(".__main__")])
    elif re.search(r'^if __name__ == "__main__":', src, re.M):
      out.append(name)
  return sorted(out)


def test_every_entry_point_parses_flags_with_absl_and_lists_them_on_help():
  """One flag convention: absl everywhere (no argparse in the package), and `--help` of every
  command lists its flags (absl's --help exits 1; the main job's own parser exits 0)."""
  import subprocess
  import sys
  argparse_users = [n for n, p in _modules().items() if "import argparse" in open(p).read()]
  assert not argparse_users, argparse_users
  commands = _entry_points()
  assert len(commands) >= 20, commands
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = {m: subprocess.Popen([sys.executable, "-m", m, "--help"], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for m in commands}
  for m, proc in procs.items():
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode in (0, 1) and "Traceback" not in out, (m, out[-2000:])
    assert re.search(r"^\s+--\w+: ", out, re.M), (m, out[-2000:])


# Modules that may read a whole config: the job and its assembly, the config modules and the tools
# that are jobs of their own (planner, benchmarks, simulator, testbed tools).
_CONFIG_EDGE_FILES = {"train.py", "main.py", "compare.py", "config_base.py", "config_common.py"}
_CONFIG_EDGE_DIRS = {"tools", "bench", "sim", "tiny"}


def test_the_whole_config_stays_at_the_edge():
  """Settings at the boundaries: outside the job, the config modules, tools and entry points (a
  module with a __main__ guard), at most the run's own config readers take a `config` parameter;
  everything else takes typed settings of its own section."""
  takers = []
  for name, path in _modules().items():
    rel = os.path.relpath(path, PKG).split(os.sep)
    if rel[0] in _CONFIG_EDGE_DIRS or (len(rel) == 1 and rel[0] in _CONFIG_EDGE_FILES):
      continue
    src = open(path).read()
    if re.search(r"""__name__ == ["']__main__["']""", src):
      continue
    for node in ast.walk(ast.parse(src, path)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
        if any(a.arg == "config" for a in args):
          takers.append(f"{name}.{node.name}")
  assert all(t.startswith("dots_jax.run.") for t in takers), takers
  assert len(takers) <= 6, takers


def test_docs_read_by_purpose():
  """A README a newcomer reads to the end, docs without development-history labels, and reference
  configs that set only what a training run reads (no simulator keys)."""
  with open(os.path.join(ROOT, "README.md")) as f:
    assert len(f.read().splitlines()) <= 250
  docs = [os.path.join(ROOT, "README.md")] + [
      os.path.join(ROOT, "docs", n) for n in os.listdir(os.path.join(ROOT, "docs"))
      if n.endswith(".md")]
  for path in docs:
    with open(path) as f:
      labels = re.findall(r"\b(?:stop|issue)[ -]\d+\b", f.read(), re.I)
    assert not labels, (path, labels[:5])
  for name in ("qwen1p5b_math.py", "qwen1p5b_greso.py", "qwen3b.py", "qwen7b.py"):
    with open(os.path.join(ROOT, "configs", name)) as f:
      assert not re.search(r"\bc\.sim\b|\bsim\.", f.read()), name
