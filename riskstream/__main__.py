from riskstream.cli import run

run()
