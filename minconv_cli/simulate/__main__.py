from minconv_cli.simulate.cli import app

if __name__ == "__main__":
    app()
