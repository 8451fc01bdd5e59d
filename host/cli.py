def main(argv=None):
    print("recfabric")
