"""`report.md` (the metrics' tables) and `report.png` (a bar per kind) of an evaluation."""

from pathlib import Path

from PIL import Image, ImageDraw

BAR_METRIC = "exact_match"


def write_report(output_dir: Path, result: dict, group_by) -> None:
    (output_dir / "report.md").write_text(report_markdown(result, group_by), encoding="utf-8")
    draw_kinds(result.get("by_kind", {})).save(output_dir / "report.png")


def report_markdown(result: dict, group_by) -> str:
    settings = result["settings"]
    lines = [
        f"# Evaluation of {settings['model']}",
        "",
        f"Data: {', '.join(settings['data'])}; turns: {settings['turns']}; greedy, "
        f"max_new_tokens {settings['max_new_tokens']}, repetition_penalty {settings['repetition_penalty']}, "
        f"seed {settings['seed']}; {result['seconds']:.0f} s.",
        "",
        "## Overall",
        "",
        *_table({"all": result["overall"]}, result["metrics"]),
    ]
    for name in group_by:
        lines += ["", f"## By {name}", "", *_table(result.get(f"by_{name}", {}), result["metrics"])]
    if result["skipped"]:
        lines += ["", f"## Skipped ({len(result['skipped'])})", ""]
        lines += [f"- {s['where']}" + (f" turn {s['turn']}" if "turn" in s else "") + f": {s['reason']}"
                  for s in result["skipped"]]  # fmt: skip
    return "\n".join(lines) + "\n"


def _table(groups: dict, metrics) -> list[str]:
    shown = [m for m in metrics if any(m in values for values in groups.values())]
    rows = [f"| group | {' | '.join(shown)} |", "|---|" + "---|" * len(shown)]
    for group, values in groups.items():
        cells = [f"{values[m]['value']:.3f} (n={values[m]['n']})" if m in values else "-" for m in shown]
        rows.append(f"| {group} | {' | '.join(cells)} |")
    return rows


def draw_kinds(by_kind: dict, width: int = 720, bar_height: int = 28) -> Image.Image:
    """A bar per kind: its exact match, with the number of turns."""
    kinds = [kind for kind, values in by_kind.items() if BAR_METRIC in values]
    image = Image.new("RGB", (width, 50 + bar_height * max(1, len(kinds))), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), f"{BAR_METRIC} per kind", fill="black")
    left, right = 180, width - 120
    for row, kind in enumerate(kinds):
        value, count = by_kind[kind][BAR_METRIC]["value"], by_kind[kind][BAR_METRIC]["n"]
        top = 40 + row * bar_height
        draw.text((10, top + 6), kind[:24], fill="black")
        draw.rectangle((left, top + 4, left + (right - left) * value, top + bar_height - 4), fill=(70, 120, 200))
        draw.text((right + 8, top + 6), f"{value:.0%} (n={count})", fill="black")
    return image
