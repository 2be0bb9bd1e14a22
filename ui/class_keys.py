"""Which digit key relabels to which class on the Review page (no Streamlit here).

When every class is a single digit (the bundled handwritten digits), the key is the class itself:
pressing 3 relabels to "3". Otherwise the classes are numbered in the engine's order, 1 to 9 and then
0 for the tenth, like the keys on a keyboard's top row; classes beyond the tenth have no key and are
reached through the type-to-search relabel box.
"""

from __future__ import annotations

from collections.abc import Sequence

KEY_ORDER = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "0")


def class_keys(classes: Sequence[str]) -> list[tuple[str, str]]:
    """(key, class) pairs in the order the key row shows them."""
    names = [str(c) for c in classes]
    if names and all(len(c) == 1 and c in KEY_ORDER for c in names) and len(set(names)) == len(names):
        return [(c, c) for c in sorted(names, key=KEY_ORDER.index)]
    return list(zip(KEY_ORDER, names, strict=False))


def without_key(classes: Sequence[str]) -> list[str]:
    """The classes no digit key reaches (more than ten classes)."""
    keyed = {c for _, c in class_keys(classes)}
    return [str(c) for c in classes if str(c) not in keyed]


def legend(classes: Sequence[str]) -> str:
    """The key row's one-line explanation, true for these classes."""
    pairs = class_keys(classes)
    if not pairs:
        return ""
    if all(k == c for k, c in pairs):
        return "**digit keys** relabel to the class of that digit"
    keys = "**1–9, 0**" if len(pairs) == 10 else f"**1–{pairs[-1][0]}**" if len(pairs) > 1 else "**1**"
    text = f"{keys} relabel to the class named on the key"
    if without_key(classes):
        text += " (other classes: type the name in *Relabel the highlighted card*)"
    return text
