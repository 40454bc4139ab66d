from minconv_cli.simulate.cli import app

app()
