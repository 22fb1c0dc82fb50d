"""The static parts of the report page: its style sheet and the scripts that render figures.

Each figure's plotly spec sits in a JSON script tag; `RENDER` draws them and counts rendered
figures in ``<html data-figures-rendered>``, which the browser test reads back; `ERROR_TRAP`
records script errors in ``<html data-js-errors>``.
"""

ERROR_TRAP = """
window.addEventListener('error', function (e) {
  var root = document.documentElement;
  root.dataset.jsErrors = (root.dataset.jsErrors || '') + String(e.message) + ';';
});
"""

RENDER = """
var figs = document.querySelectorAll('div.mp-figure');
document.documentElement.dataset.figuresTotal = figs.length;
document.documentElement.dataset.figuresRendered = 0;
figs.forEach(function (div) {
  var spec = JSON.parse(document.getElementById(div.dataset.spec).textContent);
  Plotly.newPlot(div, spec.data, spec.layout, {responsive: true, displaylogo: false})
    .then(function () {
      div.dataset.rendered = '1';
      var root = document.documentElement;
      root.dataset.figuresRendered = Number(root.dataset.figuresRendered) + 1;
    });
});
"""

CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2rem auto;
       max-width: 1200px; color: #222; line-height: 1.4; padding: 0 1rem; }
h1 { margin-bottom: .2rem; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: .3rem; margin-top: 2.5rem; }
h3 { margin: 1.6rem 0 .2rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .9rem; }
td, th { border: 1px solid #ddd; padding: .25rem .6rem; text-align: left; vertical-align: top;
         overflow-wrap: anywhere; max-width: 34rem; }
th { background: #f5f5f5; overflow-wrap: normal; }  /* a header never breaks inside a word */
.ok { color: #0a7a28; font-weight: 600; }
.bad { color: #b00020; font-weight: 600; }
.partly { color: #a35f00; font-weight: 600; }
.lexical { color: #5b4a9e; font-weight: 600; }
.verdict { padding: .05rem .45rem; border-radius: .3rem; background: #f3f3f3; }
.finding { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
.finding div { background: #f8f8fb; border-left: 4px solid #3a6fb0; padding: .5rem .9rem; }
.caption { color: #444; margin: .1rem 0 .4rem; max-width: 60rem; }
.mp-figure { width: 100%; min-height: 420px; margin: .4rem 0 1.6rem; }
.muted { color: #666; font-size: .9rem; }
details { margin: .8rem 0; }
"""
