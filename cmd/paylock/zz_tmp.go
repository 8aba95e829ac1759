package main

var cmdDemo = &command{name: "demo"}
var cmdDemoWorker = &command{name: "demo-worker", hidden: true}
