package main

var cmdDedupe = &command{name: "dedupe"}
var cmdDemo = &command{name: "demo"}
var cmdDemoWorker = &command{name: "demo-worker", hidden: true}
