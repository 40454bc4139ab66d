from minconv_cli.cli import app

app()
