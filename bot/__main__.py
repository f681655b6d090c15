"""`python -m bot` = `musechat`."""

from bot.cli.main import main

main()
