"The book renders offline and reads in a real browser (headless Chromium): title, sidebar with the parts, figure."
import shutil
from pathlib import Path
import pytest
from polar_nb.book import book_config, render_book

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT/'_site'/'screenshots'

@pytest.fixture(scope='module')
def book(tmp_path_factory):
    out = tmp_path_factory.mktemp('site')
    index = render_book(ROOT, out=out, execute=False, progress=False)
    return index

def test_book_pages(book):
    cfg = book_config(ROOT)
    pages = sorted(p.name for p in book.parent.glob('*.html'))
    assert len(pages) == len(cfg['chapters']) and 'index.html' in pages
    for p in book.parent.glob('*.html'):
        text = p.read_text()
        assert 'class="book-sidebar"' in text
        assert '<script src="http' not in text and '<link rel="stylesheet" href="http' not in text, f'{p.name} needs the network'

@pytest.fixture(scope='module')
def browser():
    chromium, driver = shutil.which('chromium'), shutil.which('chromedriver')
    if not (chromium and driver):
        pytest.skip('Chromium or ChromeDriver is not installed (Debian packages chromium, chromium-driver; .ci/run installs them)')
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
              '--disable-component-update', '--disable-sync', '--disable-quic', '--window-size=1300,1000']:
        opts.add_argument(a)
    b = webdriver.Chrome(service=Service(driver), options=opts)
    yield b
    b.quit()

def _open(browser, page):
    browser.get(page.as_uri())
    return browser

def _page(p): return 'index.html' if p.stem == 'index' else p.stem + '.html'

def test_index_in_browser(book, browser):
    cfg = book_config(ROOT)
    b = _open(browser, book)
    assert cfg['title'] in b.find_element('css selector', 'nav.book-sidebar .book-title').text
    links = [a.get_attribute('href') for a in b.find_elements('css selector', 'nav.book-sidebar li a')]
    assert [Path(l).name for l in links] == ['index.html' if p.stem == 'index' else p.stem + '.html' for p in cfg['chapters']]
    for l in links: assert Path(l.removeprefix('file://')).is_file(), l
    imgs = b.find_elements('css selector', 'main img')
    assert imgs, 'the home page has a figure'
    assert b.execute_script('return arguments[0].complete && arguments[0].naturalWidth', imgs[0]) > 100
    assert imgs[0].size['width'] > 300, 'the figure is displayed at a readable size'
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert b.save_screenshot(str(SHOTS/'index.png'))

def test_chapter_in_browser(book, browser):
    b = _open(browser, book.parent/'01_config.html')
    assert b.title.startswith('Settings')
    active = b.find_element('css selector', 'nav.book-sidebar li.active a')
    assert active.text == 'Settings'
    b.find_element('css selector', 'nav.book-sidebar li a').click()  # follow the sidebar to the home page
    assert Path(b.current_url).name == 'index.html'
    b = _open(browser, book.parent/'01_config.html')
    assert b.find_elements('css selector', '.jp-Cell-outputArea, .jp-OutputArea'), 'outputs are rendered'
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert b.save_screenshot(str(SHOTS/'01_config.png'))

def test_parts_on_every_page(book, browser):
    "Every page's sidebar shows the parts of _quarto.yml in order, each title above its chapters, the page itself highlighted."
    cfg = book_config(ROOT)
    want = [(t, [_page(p) for p in ps]) for t, ps in cfg['parts']]
    assert [t for t, _ in want] == [None, 'Foundations', 'The method', "The paper's results", 'Beyond the paper', 'Appendices']
    read = """return Array.from(document.querySelectorAll('nav.book-sidebar .book-part')).map(part => {
        const h = part.querySelector('.book-part-title'), links = Array.from(part.querySelectorAll('li a'));
        const r = e => e.getBoundingClientRect();
        return [h ? h.textContent : null, links.map(a => a.getAttribute('href')),
                h ? (h.offsetParent !== null && r(h).height > 0 && r(h).top < r(links[0]).top) : true];
      }).concat([Array.from(document.querySelectorAll('nav.book-sidebar li.active a')).map(a => a.getAttribute('href'))]);"""
    for p in cfg['chapters']:
        b = _open(browser, book.parent/_page(p))
        *parts, active = b.execute_script(read)  # one round trip per page: each part's title, links, and whether the title shows above them
        for t, _, above in parts: assert above, f'{p.name}: the part title {t!r} is not shown above its chapters'
        assert [(t, [Path(h).name for h in links]) for t, links, _ in parts] == want, p.name
        assert [Path(h).name for h in active] == [_page(p)], p.name
