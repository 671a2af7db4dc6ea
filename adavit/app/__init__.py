"""The Gradio explorer and everything only it uses: which model it serves, the analysis cache,
overlays, readouts, live accuracy, the Pareto chart, and the app's own benchmark.

May import every other subpackage. Nothing else imports this one, and only this one imports gradio.
"""
