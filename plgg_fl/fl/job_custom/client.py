"""plgg-fl site client: NVFlare runs this file from the job; the code it runs is the installed plgg-fl's
(:mod:`plgg_fl.fl.client`), never code that travelled with the job."""

from plgg_fl.fl.client import run

if __name__ == "__main__":
    run()
