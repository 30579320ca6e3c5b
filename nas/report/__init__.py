"""Look at a study: `nas report` (a self-contained plotly HTML page) and `nas dashboard`
(optuna-dashboard on the study's storage).

`study` opens a stored study and picks the trial to show (shared by both commands),
`page` turns it into figures and one HTML file, `cli` and `dashboard` are the commands.
"""
