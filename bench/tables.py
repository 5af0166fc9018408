"""The bench scripts' output: markdown tables, so a run pastes straight into the README or a note."""


def table(title: str, header: list[str], rows) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
