"The result chapters' prose cites numbers their outputs show: the decimal numbers of their markdown appear in their stored outputs."
import re
from pathlib import Path
import nbformat
import pytest

NBS = Path(__file__).resolve().parent.parent/'nbs'
RESULT_CHAPTERS = ['21_main_results', '22_ablations', '23_hard_negatives', '24_single_image', '25_weight_decay', '26_general_knowledge',
                   '27_timing', '30_cap']
DECIMAL = re.compile(r'(?<![\w.])\d+\.\d+(?![\w.])')

def shown(nb)->str:
    "Everything the notebook's code cells stored as output: printed text, plain, HTML and Markdown results."
    out = []
    for c in nb.cells:
        for o in c.get('outputs', []) if c.cell_type == 'code' else []:
            out.append(o.get('text', ''))
            for k in ('text/plain', 'text/html', 'text/markdown'): out.append(''.join(o.get('data', {}).get(k, '')))
    return '\n'.join(out)

def unshown(chapter:str)->tuple[list, int]:
    "The decimal numbers of `chapter`'s markdown that no output shows, and how many decimals its markdown has."
    nb = nbformat.read(NBS/f'{chapter}.ipynb', as_version=4)
    out, nums = shown(nb), [n for c in nb.cells if c.cell_type == 'markdown' for n in DECIMAL.findall(c.source)]
    return [n for n in nums if n not in out], len(nums)

def test_prose_numbers_appear_in_outputs():
    missing, total = {}, 0
    for ch in RESULT_CHAPTERS:
        m, n = unshown(ch); total += n
        if m: missing[ch] = m
    share = 1 - sum(map(len, missing.values())) / total
    assert total > 200 and share >= 0.99, (share, missing)

def test_what_we_found_reads_the_store():
    for ch in ['21_main_results', '22_ablations', '23_hard_negatives', '24_single_image', '25_weight_decay', '30_cap']:
        nb = nbformat.read(NBS/f'{ch}.ipynb', as_version=4)
        i = next(i for i, c in enumerate(nb.cells) if c.cell_type == 'markdown' and '## What we found' in c.source)
        cell = nb.cells[i + 1]
        assert cell.cell_type == 'code' and f"findings('{ch}')" in cell.source, ch
