"""Reader for LAReQA retrieval data (XQuAD-R, MLQA-R): one SQuAD v1.1 JSON file per language.

``<dataset_dir>/<lang>.json`` holds ``data[].paragraphs[].{context, qas, sentences, sentence_breaks}``;
``qas[].id`` is shared by the translations of a question, and its relevant candidate in that language is the
sentence whose span contains ``answers[0].answer_start``. Every sentence of every paragraph is a candidate, so
the candidate counts equal LAReQA's table (XQuAD-R en: 1180).
"""

from __future__ import annotations

from collections.abc import Iterable
from difflib import SequenceMatcher
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hbir.core.errors import DataError, shorten
from hbir.core.files import read_file_bytes
from tasks.tables import CANDIDATE_COLUMNS, QREL_COLUMNS, QUERY_COLUMNS, DatasetTables, frame

# How far (in characters) a sentence may sit from its recorded break: XQuAD-R tr.json has two breaks off by 1-2.
BREAK_TOLERANCE = 3
# How similar a sentence must be to the text at its break when it is not found verbatim: the same tr.json
# sentence carries a mis-decoded character ("1⁞2" where the paragraph has "1\xe2\x81\x842").
MIN_SENTENCE_SIMILARITY = 0.9
MAX_PROBLEMS_SHOWN = 3


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class Answer(_Strict):
    answer_start: int
    text: str


class Question(_Strict):
    id: str
    question: str
    answers: list[Answer] = Field(min_length=1)


class Paragraph(_Strict):
    context: str
    qas: list[Question]
    sentences: list[str]
    sentence_breaks: list[tuple[int, int]]


class Article(_Strict):
    title: str | None = None
    paragraphs: list[Paragraph]


class SquadFile(_Strict):
    data: list[Article]


def read_lareqa(dataset_dir: Path, name: str, languages: Iterable[str]) -> DatasetTables:
    """Read every ``<lang>.json`` of ``dataset_dir`` into the canonical tables; raise ``DataError`` on bad input."""
    files = sorted(dataset_dir.glob("*.json"))
    known = set(languages)
    for path in files:
        if path.stem not in known:
            raise DataError(
                path,
                f"file name {path.name!r} is not a known language code; expected <lang>.json with lang in "
                f"data.languages, e.g. en.json (known: {', '.join(sorted(known))})",
            )
    parsed = {path.stem: (path, parse_squad_file(path)) for path in files}
    queries, candidates, answer_cids, paragraph_qids = [], [], [], {}
    for lang, (path, squad) in parsed.items():
        for number, (where, paragraph) in enumerate(_paragraphs(squad)):
            key = f"{lang}-{number}"
            problems = list(_paragraph_problems(where, paragraph))
            if problems:
                raise DataError(path, _summarise(problems))
            paragraph_qids[key] = [qa.id for qa in paragraph.qas]
            for index, sentence in enumerate(paragraph.sentences):
                candidates.append(
                    {
                        "dataset": name,
                        "cid": f"{key}-{index}",
                        "lang": lang,
                        "doc_id": key,
                        "text": sentence,
                        "context": paragraph.context,
                    }
                )
            for qa in paragraph.qas:
                queries.append({"dataset": name, "qid": qa.id, "lang": lang, "text": qa.question})
                index = _answer_sentence(paragraph.sentence_breaks, qa.answers[0].answer_start)
                answer_cids.append({"dataset": name, "qid": qa.id, "cid": f"{key}-{index}"})
    doc_ids = _parallel_doc_ids(paragraph_qids)
    candidates_frame = frame(candidates, CANDIDATE_COLUMNS)
    candidates_frame["doc_id"] = candidates_frame["doc_id"].map(doc_ids)
    return DatasetTables(
        name=name,
        queries=frame(queries, QUERY_COLUMNS),
        candidates=candidates_frame,
        qrels=frame(answer_cids, QREL_COLUMNS),
        sources={lang: path for lang, (path, _) in parsed.items()},
    )


def parse_squad_file(path: Path) -> SquadFile:
    """Decode and schema-check one file; every failure names the file and the JSON path of the field."""
    raw = read_file_bytes(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        snippet = raw[max(0, error.start - 20) : error.start].decode("utf-8", "replace")
        raise DataError(
            path,
            f"not UTF-8: byte 0x{raw[error.start]:02x} at offset {error.start} "
            f"(after {snippet!r}); re-save the file as UTF-8",
        ) from None
    try:
        return SquadFile.model_validate_json(text)
    except ValidationError as error:
        raise DataError(path, _describe_schema_errors(error)) from None


def _describe_schema_errors(error: ValidationError) -> str:
    items = error.errors()
    if items[0]["type"] == "json_invalid":
        return f"not valid JSON (truncated or corrupt?): {items[0]['msg']}"
    lines = []
    for item in items[:MAX_PROBLEMS_SHOWN]:
        field = _json_path(item["loc"]) or "top level"
        if not item["loc"]:
            lines.append(
                f'top level: expected a SQuAD object like {{"data": [{{"paragraphs": [...]}}]}}, '
                f"got {type(item['input']).__name__}"
            )
        elif item["type"] == "missing":
            lines.append(f"field {field}: missing")
        else:
            lines.append(f"field {field}: {item['msg']}, got {shorten(item['input'])}")
    more = f" (and {len(items) - MAX_PROBLEMS_SHOWN} more)" if len(items) > MAX_PROBLEMS_SHOWN else ""
    return "; ".join(lines) + more


def _json_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _paragraphs(squad: SquadFile):
    for i, article in enumerate(squad.data):
        for j, paragraph in enumerate(article.paragraphs):
            yield f"data[{i}].paragraphs[{j}]", paragraph


def _paragraph_problems(where: str, paragraph: Paragraph):
    """Inconsistent sentence breaks and answers outside their paragraph or between sentences."""
    context, breaks, sentences = paragraph.context, paragraph.sentence_breaks, paragraph.sentences
    if len(breaks) != len(sentences):
        yield f"field {where}.sentence_breaks: {len(breaks)} breaks for {len(sentences)} sentences"
        return
    previous_end = 0
    for k, ((start, end), sentence) in enumerate(zip(breaks, sentences, strict=True)):
        if not (previous_end - BREAK_TOLERANCE <= start < end <= len(context) + BREAK_TOLERANCE):
            yield (
                f"field {where}.sentence_breaks[{k}]: [{start}, {end}] is not an increasing span inside the "
                f"paragraph ({len(context)} chars, previous break ends at {previous_end})"
            )
            return
        if not _sentence_at_break(sentence, context, start, end):
            yield (
                f"field {where}.sentences[{k}]: {shorten(sentence)} is not the paragraph's text at its break "
                f"[{start}, {end}] ({shorten(context[start:end])})"
            )
        previous_end = end
    for k, qa in enumerate(paragraph.qas):
        answer, field = qa.answers[0], f"{where}.qas[{k}].answers[0]"
        found = context[answer.answer_start : answer.answer_start + len(answer.text)]
        if not 0 <= answer.answer_start < len(context) or found != answer.text:
            yield (
                f"field {field}: answer {shorten(answer.text)} at answer_start={answer.answer_start} is not in "
                f"its paragraph (found {shorten(found)}; the paragraph has {len(context)} chars), qid {qa.id!r}"
            )
        elif _answer_sentence(breaks, answer.answer_start) is None:
            yield f"field {field}.answer_start: {answer.answer_start} falls in no sentence break, qid {qa.id!r}"


def _sentence_at_break(sentence: str, context: str, start: int, end: int) -> bool:
    window = context[max(0, start - BREAK_TOLERANCE) : end + BREAK_TOLERANCE]
    if sentence.strip() in window:
        return True
    return SequenceMatcher(None, sentence, context[start:end], autojunk=False).ratio() >= MIN_SENTENCE_SIMILARITY


def _answer_sentence(breaks: list[tuple[int, int]], answer_start: int) -> int | None:
    return next((k for k, (start, end) in enumerate(breaks) if start <= answer_start < end), None)


def _summarise(problems: list[str]) -> str:
    more = f" (and {len(problems) - MAX_PROBLEMS_SHOWN} more)" if len(problems) > MAX_PROBLEMS_SHOWN else ""
    return "; ".join(problems[:MAX_PROBLEMS_SHOWN]) + more


def _parallel_doc_ids(paragraph_qids: dict[str, list[str]]) -> dict[str, str]:
    """Name each paragraph's translation group: paragraphs linked by a shared question id get one ``doc_id``.

    XQuAD-R paragraphs are exact translations (240 groups of 11); MLQA-R contexts were cut per language, so a
    group may hold two paragraphs of one language. Paragraphs without questions stay on their own.
    """
    parent: dict[str, str] = {}

    def root(node: str) -> str:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for key, qids in paragraph_qids.items():
        for qid in qids:
            parent[root("q:" + qid)] = root(key)
    groups: dict[str, list[str]] = {}
    for key in paragraph_qids:
        groups.setdefault(root(key), []).append(key)
    names = {}
    for members in groups.values():
        qids = [qid for key in members for qid in paragraph_qids[key]]
        name = f"doc-{min(qids)}" if qids else f"doc-{members[0]}"
        names.update({key: name for key in members})
    return names
