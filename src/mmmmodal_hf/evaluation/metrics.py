"""The metrics `mmmmodal eval` reports, each over a group of scored turns (a kind, a language, all of them).

Per turn: `exact_match`, token `f1`, `rouge_l`, `choice_accuracy` (multiple-choice rows) and, when asked for,
`verdict_match` (the last sentences: worked answers) are averaged over the group; `chrf`, `bleu` (sacrebleu) and `wer`, `cer` (jiwer, transcription rows) are corpus-level over the group's
turns, as those libraries define them. Every value comes with `n`, the turns it was computed over.
"""

import re
import string
import unicodedata

DEFAULT_METRICS = ("exact_match", "f1", "chrf", "bleu", "rouge_l", "wer", "cer", "choice_accuracy")
METRICS = (*DEFAULT_METRICS, "verdict_match")
CORPUS = {"chrf", "bleu", "wer", "cer"}
TRANSCRIPTION_ONLY = {"wer", "cer"}
_EDGE_PUNCTUATION = string.punctuation + "“”‘’«»…。、"


def normalise(text: str) -> str:
    """Case folded, Unicode NFKC, whitespace collapsed, punctuation stripped from both ends of every word:
    "Blue." and " blue" are the same answer; "3.5" keeps its point."""
    words = unicodedata.normalize("NFKC", text).casefold().split()
    return " ".join(word for word in (w.strip(_EDGE_PUNCTUATION) for w in words) if word)


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise(prediction) == normalise(reference))


def verdict(answer: str) -> str:
    """An answer's last sentence: all of a short answer, the conclusion of a worked one ("Two.", "So audio 3.")."""
    return answer.strip().rsplit(". ", 1)[-1]


def verdict_match(prediction: str, reference: str) -> float:
    """`exact_match` of the last sentences: a worked answer is right when its conclusion is, whatever its steps."""
    return exact_match(verdict(prediction), verdict(reference))


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the normalised words in common, counted with multiplicity (SQuAD's definition, no article removal)."""
    predicted, expected = normalise(prediction).split(), normalise(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    remaining, common = list(expected), 0
    for word in predicted:
        if word in remaining:
            remaining.remove(word)
            common += 1
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (Google's rouge-score), on the normalised texts."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_WordTokenizer())
    return scorer.score(normalise(reference), normalise(prediction))["rougeL"].fmeasure


class _WordTokenizer:
    """Whitespace words: rouge-score's own tokenizer drops every non-ASCII letter."""

    def tokenize(self, text: str) -> list[str]:
        return text.split()


_CHOICE_LABEL = re.compile(r"^\(?([A-Za-z]|\d{1,2})[\).:]?(?:\s|$)")


def chosen_option(answer: str, choices: list[str]) -> int | None:
    """The option `answer` names, 0-based: by its letter or number ("B", "(b)", "2."), else by its text; None when
    it names none, or several by text."""
    answer = answer.strip()
    if match := _CHOICE_LABEL.match(answer):
        label = match.group(1)
        index = int(label) - 1 if label.isdigit() else ord(label.upper()) - ord("A")
        if 0 <= index < len(choices):
            return index
    named = [
        index for index, choice in enumerate(choices) if normalise(choice) and normalise(choice) in normalise(answer)
    ]
    return named[0] if len(named) == 1 else None


def choice_accuracy(prediction: str, reference: str, choices: list[str]) -> float:
    expected = chosen_option(reference, choices)
    return float(expected is not None and chosen_option(prediction, choices) == expected)


def turn_scores(prediction: str, reference: str, metrics, transcription: bool, choices: list[str] | None) -> dict:
    """The per-turn metrics of one scored turn (those that apply to it)."""
    scores = {}
    if "exact_match" in metrics:
        scores["exact_match"] = exact_match(prediction, reference)
    if "f1" in metrics:
        scores["f1"] = token_f1(prediction, reference)
    if "verdict_match" in metrics:
        scores["verdict_match"] = verdict_match(prediction, reference)
    if "rouge_l" in metrics:
        scores["rouge_l"] = rouge_l(prediction, reference)
    if "choice_accuracy" in metrics and choices:
        scores["choice_accuracy"] = choice_accuracy(prediction, reference, choices)
    if transcription and ("wer" in metrics or "cer" in metrics):
        import jiwer

        reference_text, predicted_text = normalise(reference) or " ", normalise(prediction)
        if "wer" in metrics:
            scores["wer"] = jiwer.wer(reference_text, predicted_text)
        if "cer" in metrics:
            scores["cer"] = jiwer.cer(reference_text, predicted_text)
    return scores


def group_metrics(turns: list[dict], metrics) -> dict:
    """Each metric over `turns` (records with `prediction`, `reference`, `scores`, `transcription`): its `value`
    and `n`. A metric no turn of the group takes (wer on rows that are not transcriptions) is left out."""
    result = {}
    for name in metrics:
        if name in CORPUS:
            taking = [t for t in turns if t.get("transcription")] if name in TRANSCRIPTION_ONLY else turns
            if taking:
                result[name] = {"value": _corpus(name, taking), "n": len(taking)}
        else:
            values = [t["scores"][name] for t in turns if name in t["scores"]]
            if values:
                result[name] = {"value": sum(values) / len(values), "n": len(values)}
    return result


def _corpus(name: str, turns: list[dict]) -> float:
    predictions, references = [t["prediction"] for t in turns], [t["reference"] for t in turns]
    if name in ("wer", "cer"):
        import jiwer

        measure = jiwer.wer if name == "wer" else jiwer.cer
        return measure([normalise(r) or " " for r in references], [normalise(p) for p in predictions])
    import sacrebleu

    if name == "bleu":
        return sacrebleu.corpus_bleu(predictions, [references]).score
    return sacrebleu.corpus_chrf(predictions, [references]).score


__all__ = ["DEFAULT_METRICS", "METRICS", "normalise", "exact_match", "verdict", "verdict_match", "token_f1", "rouge_l",
           "chosen_option", "turn_scores", "group_metrics"]  # fmt: skip
