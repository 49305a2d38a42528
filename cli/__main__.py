from geolabel.cli import main

main()
