"""`python -m offload` is `offload-chat`."""

from offload.cli.chat import main

if __name__ == "__main__":
    main()
