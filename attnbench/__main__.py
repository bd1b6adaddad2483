from attnbench.cli import app

app()
