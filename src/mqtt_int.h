/*
 * mqtt_int.h - between the two files of the MQTT edge: the connection
 * (mqtt.c) hands Paho the message callback of the intake (intake.c).
 * Internal: not installed.
 */
#ifndef MRB_MQTT_INT_H
#define MRB_MQTT_INT_H

#include <MQTTAsync.h>

/* Paho's MQTTAsync_messageArrived: Paho's receive thread only. */
int mrb_intake_on_message(void *ctx, char *topic, int tlen, MQTTAsync_message *msg);

#endif
