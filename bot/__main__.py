"""`python -m bot` = `musechat`."""

from bot.cli import main

main()
