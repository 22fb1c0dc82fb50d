"""Texts and the tokens taken from them: sources, downloads, targets, sentences.

Nothing in this package runs a model. Import from the modules: `mechprobe.corpus.text`
(text sources), `mechprobe.corpus.download` (cached downloads), `mechprobe.corpus.targets`
(the course's negation / affirmation targets and their windows), `mechprobe.corpus.classes`
(any classes from a TOML or JSON class file; the negation preset), `mechprobe.corpus.labels`
(a JSONL of labelled positions), `mechprobe.corpus.sentences` (a target word located in
sentences).
"""
