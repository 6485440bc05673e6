"""Code 128 barcodes of CCRNs, drawn as SVG on the server.

A CCRN is twelve digits, an even number, so code set C (two digits per symbol) encodes it in six data
symbols: Start C, the digit pairs, the modulo-103 check symbol, Stop. During contingency officers clear
trucks by hand from these barcodes (design section 5), so any ordinary scanner must read them: a quiet
zone of ten modules on each side, and bars at least two pixels wide.
"""

from __future__ import annotations

# Bar and space widths (in modules) of symbol values 0..105, as ISO/IEC 15417 tabulates them: bar,
# space, bar, space, bar, space; each symbol is 11 modules wide. The stop pattern has a seventh element
# (a final two-module bar) and is 13 modules wide.
PATTERNS = (
    "212222", "222122", "222221", "121223", "121322", "131222", "122213", "122312", "132212", "221213",
    "221312", "231212", "112232", "122132", "122231", "113222", "123122", "123221", "223211", "221132",
    "221231", "213212", "223112", "312131", "311222", "321122", "321221", "312212", "322112", "322211",
    "212123", "212321", "232121", "111323", "131123", "131321", "112313", "132113", "132311", "211313",
    "231113", "231311", "112133", "112331", "132131", "113123", "113321", "133121", "313121", "211331",
    "231131", "213113", "213311", "213131", "311123", "311321", "331121", "312113", "312311", "332111",
    "314111", "221411", "431111", "111224", "111422", "121124", "121421", "141122", "141221", "112214",
    "112412", "122114", "122411", "142112", "142211", "241211", "221114", "413111", "241112", "134111",
    "111242", "121142", "121241", "114212", "124112", "124211", "411212", "421112", "421211", "212141",
    "214121", "412121", "111143", "111341", "131141", "114113", "114311", "411113", "411311", "113141",
    "114131", "311141", "411131", "211412", "211214", "211232",
)  # fmt: skip
START_C = 105
STOP = "2331112"
QUIET = 10  # modules of white on each side


def symbols_set_c(digits: str) -> list[int]:
    """Start C, one value per digit pair, the check symbol (Stop is not a value)."""
    if not digits or len(digits) % 2 or not digits.isascii() or not digits.isdigit():
        raise ValueError("code set C encodes an even number of digits")
    values = [START_C] + [int(digits[i : i + 2]) for i in range(0, len(digits), 2)]
    check = (values[0] + sum(i * v for i, v in enumerate(values[1:], start=1))) % 103
    return [*values, check]


def widths(digits: str) -> list[int]:
    """The run lengths in modules, starting with a bar and alternating bar / space, without quiet zones."""
    runs = [int(w) for value in symbols_set_c(digits) for w in PATTERNS[value]]
    return runs + [int(w) for w in STOP]


def svg(digits: str, module: int = 2, height: int = 80, title: str = "") -> str:
    """The barcode as an SVG document: one ``rect`` per bar, white background and quiet zones."""
    runs = widths(digits)
    total = (sum(runs) + 2 * QUIET) * module
    bars: list[str] = []
    x = QUIET * module
    for i, run in enumerate(runs):
        if i % 2 == 0:
            bars.append(f'<rect x="{x}" y="0" width="{run * module}" height="{height}"/>')
        x += run * module
    label = title or f"Code 128 barcode of {digits}"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="barcode" role="img" viewBox="0 0 {total} {height}" '
        f'width="{total}" height="{height}" shape-rendering="crispEdges" aria-label="{_attr(label)}">'
        f'<title>{_attr(label)}</title><rect width="{total}" height="{height}" fill="#fff"/>'
        f'<g fill="#000">{"".join(bars)}</g></svg>'
    )


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
